"""Checks shared by the two ExLlama configs (light: no torch import).

Whether CUDA is here at all is :func:`backends.gpu.cuda_missing_reason`, shared with vLLM and the scraper.
"""

from __future__ import annotations

from backends.base import Capabilities, EngineOptions
from backends.checks import refuse_unsupported
from backends.errors import UnsupportedOptionError


def refuse_common(name: str, caps: Capabilities, options: EngineOptions, fmt: str, kv_cache_dtype: str) -> None:
    """Refusals the ExLlama engines share; ``kv_cache_dtype`` says why a KV-cache dtype is refused."""
    refuse_unsupported(name, caps, options, fmt, {
        "kv_cache_dtype": kv_cache_dtype,
        "parallelism": "one GPU only in this adapter",
        "kv_cache_memory_bytes": "the cache holds max_batch x max_model_len tokens; size it with those",
        "threads": "none (a GPU engine)",
        "quantization": "the checkpoint's own format from models.yaml",
        "batch_invariant": "False (ExLlama has no batch-invariant kernels; serve one request at a time (eval "
                           "concurrency 1) for repeatable replies)",
    })
    if options.device == "cpu":
        raise UnsupportedOptionError(name, "device", "cpu", "cuda (the kernels are CUDA-only)")
    if options.dtype not in ("auto", "float16"):
        raise UnsupportedOptionError(name, "dtype", options.dtype, "auto or float16 (fp16 compute only)")
