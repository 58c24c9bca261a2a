"""Light config for the Transformers engine: capabilities and option checks (no torch import)."""

from __future__ import annotations

from backends.base import Capabilities, EngineOptions
from backends.errors import UnsupportedOptionError
from backends.registry import module_available

NAME = "transformers"

CAPABILITIES = Capabilities(
    formats=("hf", "gguf"),
    kv_cache_dtypes=("auto",),
    speculative=("none",),
    prefix_caching=False,
    batching="continuous",
    devices=("cpu", "cuda"),
    notes="GGUF is dequantized at load; the KV cache is dense and left-padded per batch.",
)


def availability() -> str | None:
    """Why the engine cannot run here, or None."""
    for module in ("torch", "transformers"):
        if not module_available(module):
            return f"{module} is not installed (pip install 'servebench[transformers]')"
    return None


def validate(options: EngineOptions, fmt: str) -> None:
    """Refuse what the engine cannot honour."""
    caps = CAPABILITIES
    if fmt not in caps.formats:
        raise UnsupportedOptionError(NAME, "format", fmt, caps.formats)
    if options.kv_cache_dtype not in caps.kv_cache_dtypes:
        raise UnsupportedOptionError(NAME, "kv_cache_dtype", options.kv_cache_dtype, caps.kv_cache_dtypes)
    if options.speculative_method not in caps.speculative:
        raise UnsupportedOptionError(NAME, "speculative", options.speculative, caps.speculative)
    if options.prefix_caching:
        raise UnsupportedOptionError(NAME, "prefix_caching", True, "no prefix cache in this engine")
    parallel = (options.tensor_parallel_size, options.pipeline_parallel_size, options.data_parallel_size)
    if parallel != (1, 1, 1):
        raise UnsupportedOptionError(NAME, "parallelism", parallel, "single device only")
    if options.kv_cache_memory_bytes is not None:
        raise UnsupportedOptionError(NAME, "kv_cache_memory_bytes", options.kv_cache_memory_bytes,
                                     "the cache grows with the batch; bound it with max_batch")
    if options.quantization not in (None, "none"):
        raise UnsupportedOptionError(NAME, "quantization", options.quantization, "formats from models.yaml")
