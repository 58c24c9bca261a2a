"""The llm-compressor virtual environment (``venvs_dir()/llm-compressor``), created once and reused.

llm-compressor 0.14 pins transformers (<=5.17) and compressed-tensors (0.19) and pulls in its own
helpers, so it lives in its own venv; ``bench quantize`` runs a small script there as a subprocess.
Creation is idempotent: a marker file records the requirements that were installed, and a cache lock
keeps parallel processes from building the same venv twice.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from backends.llamacpp.source import cache_lock
from bench.paths import venvs_dir

PINS: tuple[str, ...] = (
    "llmcompressor==0.14.*",
    "compressed-tensors==0.19.*",
    "transformers>=5.14,<=5.17.99",
)
MARKER = ".servebench-ready"


class VenvError(RuntimeError):
    """The llm-compressor venv could not be created."""


def venv_dir() -> Path:
    """Where the llm-compressor venv lives."""
    return venvs_dir() / "llm-compressor"


def venv_python() -> Path:
    """The venv's interpreter."""
    return venv_dir() / "bin" / "python"


def requirements() -> list[str]:
    """The pins plus this interpreter's exact torch build, so pip never fetches a CUDA torch (6 GB) on CPU."""
    try:
        torch = f"torch=={importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        torch = "torch>=2.11"
    return [*PINS, torch]


def _ready(root: Path) -> bool:
    marker = root / MARKER
    return marker.is_file() and marker.read_text().splitlines() == requirements()


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VenvError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{result.stderr[-3000:]}")


def ensure_venv() -> Path:
    """Create (once) and return the venv's python; later calls return at once."""
    root = venv_dir()
    if _ready(root):
        return venv_python()
    with cache_lock("venv-llm-compressor"):
        if _ready(root):
            return venv_python()
        if root.exists():
            shutil.rmtree(root)  # a half-built venv from an interrupted run
        root.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(root)], "creating the venv")
        wanted = requirements()
        _run([str(venv_python()), "-m", "pip", "install", "--quiet", *wanted], "pip install llmcompressor")
        (root / MARKER).write_text("\n".join(wanted) + "\n")
    return venv_python()


def main() -> None:
    """``python -m bench.quantize.llmcompressor_venv``: create the venv and print its python."""
    print(ensure_venv())


if __name__ == "__main__":
    main()
