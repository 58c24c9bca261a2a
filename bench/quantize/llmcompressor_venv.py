"""The llm-compressor virtual environment (``venvs_dir()/llm-compressor``), created once and reused.

llm-compressor 0.14 pins transformers (<=5.17) and compressed-tensors (0.19) and pulls in its own
helpers, so it lives in its own venv; ``bench quantize`` runs a small script there as a subprocess.
Creation is idempotent: a marker file records the requirements that were installed, and a cache lock
keeps parallel processes from building the same venv twice.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from backends.venvs import EngineVenv, cli

PINS: tuple[str, ...] = (
    "llmcompressor==0.14.*",
    "compressed-tensors==0.19.*",
    "transformers>=5.14,<=5.17.99",
)


def requirements() -> list[str]:
    """The pins plus this interpreter's exact torch build, so pip never fetches a CUDA torch (6 GB) on CPU."""
    try:
        torch = f"torch=={importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        torch = "torch>=2.11"
    return [*PINS, torch]


def llmc_venv() -> EngineVenv:
    """The venv, with requirements resolved for this interpreter."""
    return EngineVenv("llm-compressor", tuple(requirements()), check="import llmcompressor")


def venv_python() -> Path:
    """The venv's interpreter."""
    return llmc_venv().python


def ensure_venv() -> Path:
    """Create (once) and return the venv's python; later calls return at once."""
    return llmc_venv().ensure()


if __name__ == "__main__":
    cli(llmc_venv())
