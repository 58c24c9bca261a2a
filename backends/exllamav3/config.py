"""Light config for the ExLlamaV3 engine: capabilities and option checks (imports no torch, no exllamav3)."""

from __future__ import annotations

from backends.base import KV_BITS_PAIR, Capabilities, EngineOptions, kv_cache_bits
from backends.exllamav2.gpu import refuse_common
from backends.gpu import cuda_missing_reason
from backends.registry import module_available

NAME = "exllamav3"

CAPABILITIES = Capabilities(
    formats=("exl3",),
    kv_cache_dtypes=("auto", "q8", "q6", "q4", KV_BITS_PAIR),
    speculative=("none", "ngram", "draft"),
    prefix_caching=True,
    batching="continuous",
    devices=("cuda",),
    notes=("exllamav3 1.6.5 generator (its own paged attention kernels, no flash-attn needed); fp16 compute. "
           "KV q8/q6/q4 are CacheLayer_quant with k_bits=v_bits=8/6/4, k<bits>v<bits> (e.g. k8v4) sets the key "
           "and value bits apart (2 to 8 each); fp8 has no equivalent and is refused. "
           "n-gram drafting uses suffix matches of at least 2 tokens. Its kernels compile just in time on first "
           "use (over 12 min on 16 cores). Identical 256-token prompt pages are shared between running jobs; "
           "without prefix_caching finished jobs' pages are not kept for reuse."),
)


def cache_layer_args(kv_cache_dtype: str) -> dict[str, int]:
    """The ``k_bits``/``v_bits`` of ``CacheLayer_quant`` for a KV-cache dtype; empty for the FP16 cache (auto)."""
    bits = kv_cache_bits(kv_cache_dtype)
    return {} if bits is None else {"k_bits": bits[0], "v_bits": bits[1]}


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
                  kv_cache_dtype=f"auto, q8, q6, q4 or {KV_BITS_PAIR} (CacheLayer_quant's k_bits/v_bits, 2 to 8); "
                                 "exllamav3 has no fp8 cache")
