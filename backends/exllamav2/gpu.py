"""Checks shared by the two ExLlama configs (light: no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

from backends.base import Capabilities, EngineOptions
from backends.errors import UnsupportedOptionError


def cuda_missing_reason() -> str | None:
    """``None`` when an NVIDIA GPU is visible, else why not (the ExLlama kernels are CUDA-only)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "needs CUDA: CUDA_VISIBLE_DEVICES hides every GPU"
    if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()):
        return "needs CUDA: no NVIDIA GPU or driver on this machine"
    return None


def refuse_common(name: str, caps: Capabilities, options: EngineOptions) -> None:
    """Refusals the ExLlama engines share: speculative method, device, dtype, parallelism, sizing knobs."""
    if options.speculative_method not in caps.speculative:
        raise UnsupportedOptionError(name, "speculative", options.speculative, caps.speculative)
    if options.device == "cpu":
        raise UnsupportedOptionError(name, "device", "cpu", "cuda (the kernels are CUDA-only)")
    if options.dtype not in ("auto", "float16"):
        raise UnsupportedOptionError(name, "dtype", options.dtype, "auto or float16 (fp16 compute only)")
    parallel = (options.tensor_parallel_size, options.pipeline_parallel_size, options.data_parallel_size)
    if parallel != (1, 1, 1):
        raise UnsupportedOptionError(name, "parallelism", parallel, "one GPU only in this adapter")
    if options.kv_cache_memory_bytes is not None:
        raise UnsupportedOptionError(name, "kv_cache_memory_bytes", options.kv_cache_memory_bytes,
                                     "the cache holds max_batch x max_model_len tokens; size it with those")
    if options.threads is not None:
        raise UnsupportedOptionError(name, "threads", options.threads, "none (a GPU engine)")
    if options.quantization not in (None, "none"):
        raise UnsupportedOptionError(name, "quantization", options.quantization,
                                     "the checkpoint's own format from models.yaml")
