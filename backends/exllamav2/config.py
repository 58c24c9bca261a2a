"""Light config for the ExLlamaV2 engine: capabilities and option checks (imports no torch, no exllamav2)."""

from __future__ import annotations

from types import MappingProxyType

from backends.base import Capabilities, EngineOptions
from backends.errors import UnsupportedOptionError
from backends.exllamav2.gpu import refuse_common
from backends.gpu import cuda_missing_reason
from backends.registry import module_available

NAME = "exllamav2"

# Paged attention (batching) in exllamav2 needs flash-attn >= 2.5.7; without it the dynamic generator runs
# unpaged, one sequence at a time. Decided once from what is installed where this module is imported.
HAS_FLASH_ATTN = module_available("flash_attn")

# kv_cache_dtype -> the exllamav2 cache class (the engine looks it up by name in the exllamav2 package).
CACHE_CLASSES = MappingProxyType({"auto": "ExLlamaV2Cache", "q8": "ExLlamaV2Cache_Q8", "q6": "ExLlamaV2Cache_Q6",
                                  "q4": "ExLlamaV2Cache_Q4"})

CAPABILITIES = Capabilities(
    formats=("exl2", "gptq", "hf"),
    kv_cache_dtypes=tuple(CACHE_CLASSES),
    speculative=("none", "ngram", "draft"),
    prefix_caching=True,
    batching="continuous" if HAS_FLASH_ATTN else "none",
    devices=("cuda",),
    notes=("exllamav2 0.3.2 (archived) dynamic generator; fp16 compute. KV q8/q6/q4 are its Q8/Q6/Q4 caches (the "
           "same bits for keys and values, so k<bits>v<bits> is refused); its FP8 cache does not work with the "
           "dynamic generator, so fp8 is refused. Batching needs flash-attn >= 2.5.7 (paged attention); without "
           "it max_batch must be 1. "
           "Paged mode shares identical 256-token prompt pages between running jobs; without prefix_caching "
           "finished jobs' pages are dropped, so nothing is reused across requests."),
)

# Why a KV-cache dtype is refused (the hint of the error).
KV_REFUSAL = ("auto, q8, q6 or q4 (its Q8/Q6/Q4 caches quantize keys and values alike, so no k<bits>v<bits>; its "
              "FP8 cache does not work with its dynamic generator)")


def availability() -> str | None:
    """Why the engine cannot run here, or None."""
    reason = cuda_missing_reason()
    if reason:
        return reason
    for module in ("torch", "exllamav2", "transformers"):
        if not module_available(module):
            return f"{module} is not installed (pip install 'servebench[exllamav2]')"
    return None


def validate(options: EngineOptions, fmt: str, *, flash_attn: bool | None = None) -> None:
    """Refuse what the engine cannot honour (``flash_attn`` overrides detection, for tests)."""
    refuse_common(NAME, CAPABILITIES, options, fmt,
                  kv_cache_dtype=KV_REFUSAL)
    has_fa = HAS_FLASH_ATTN if flash_attn is None else flash_attn
    if options.max_batch > 1 and not has_fa:
        raise UnsupportedOptionError(NAME, "max_batch", options.max_batch,
                                     "1 without flash-attn >= 2.5.7 (exllamav2 batches only with paged attention)")
