"""Light config for the ExLlamaV3 engine: capabilities and option checks (imports no torch, no exllamav3)."""

from __future__ import annotations

from backends.base import Capabilities, EngineOptions
from backends.exllamav2.gpu import refuse_common
from backends.gpu import cuda_missing_reason
from backends.registry import module_available

NAME = "exllamav3"

# kv_cache_dtype -> (k_bits, v_bits) of CacheLayer_quant; "auto" is the FP16 cache.
KV_BITS: dict[str, tuple[int, int]] = {"q8": (8, 8), "q4": (4, 4)}

CAPABILITIES = Capabilities(
    formats=("exl3",),
    kv_cache_dtypes=("auto", "q8", "q4"),
    speculative=("none", "ngram", "draft"),
    prefix_caching=True,
    batching="continuous",
    devices=("cuda",),
    notes=("exllamav3 1.6.5 generator (its own paged attention kernels, no flash-attn needed); fp16 compute. "
           "KV q8/q4 are CacheLayer_quant with k_bits=v_bits=8/4; fp8 has no equivalent and is refused. "
           "n-gram drafting uses suffix matches of at least 2 tokens. Its kernels compile just in time on first "
           "use (over 12 min on 16 cores). Identical 256-token prompt pages are shared between running jobs; "
           "without prefix_caching finished jobs' pages are not kept for reuse."),
)


def availability() -> str | None:
    """Why the engine cannot run here, or None."""
    reason = cuda_missing_reason()
    if reason:
        return reason
    for module in ("torch", "exllamav3", "transformers"):
        if not module_available(module):
            return f"{module} is not installed (pip install 'servebench[exllamav3]')"
    return None


def validate(options: EngineOptions, fmt: str) -> None:
    """Refuse what the engine cannot honour."""
    refuse_common(NAME, CAPABILITIES, options, fmt,
                  kv_cache_dtype=f"{CAPABILITIES.kv_cache_dtypes} (k/v bits {KV_BITS})")
