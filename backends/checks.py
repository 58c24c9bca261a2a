"""The option checks every engine's ``validate`` shares; each engine passes its own reasons.

An engine refuses, with :class:`backends.errors.UnsupportedOptionError`, a format, KV-cache dtype or speculative
method outside its :class:`backends.base.Capabilities`, prefix caching it lacks, parallelism of a kind it does
not list, several HTTP frontends (``api_server_count``) where it has one, batch-invariant outputs
(``batch_invariant``) without such kernels, and any option it names in ``reasons``
among those it takes no value for (:data:`FIXED_OPTIONS`), and ``device='cuda'`` on a machine where CUDA sees no GPU
(:func:`refuse_cuda_without_gpu`).
Checks only one engine makes stay in that engine's ``config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from backends.base import Capabilities, EngineOptions
from backends.errors import UnsupportedOptionError
from backends.gpu import cuda_missing_reason

# Options an engine may refuse outright, in the order they are checked, each with the values that leave it unset.
FIXED_OPTIONS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("dtype", ("auto",)),
    ("kv_cache_memory_bytes", (None,)),
    ("threads", (None,)),
    ("quantization", (None, "none")),
)
# Why an engine without batch-invariant kernels refuses ``batch_invariant``, and what gives repeatable replies instead.
NOT_BATCH_INVARIANT = ("no batch-invariant kernels: the batch a request lands in changes its reductions; serve one "
                       "request at a time (eval concurrency 1) for repeatable replies")
# The parallelism kinds of ``Capabilities.parallelism``, in the order of the three size options.
PARALLEL_KINDS = ("tensor", "pipeline", "data")


def refuse_unsupported(engine: str, caps: Capabilities, options: EngineOptions, fmt: str,
                       reasons: Mapping[str, object]) -> None:
    """Raise for the first of ``options`` (and ``fmt``) that ``engine`` cannot honour.

    ``reasons[option]`` is the hint the error gives after "supported:". Format, kv_cache_dtype and speculative
    are checked against ``caps`` and hint at its values where ``reasons`` has none; an option of
    :data:`FIXED_OPTIONS` is checked only where ``reasons`` names it.
    """
    _refuse_outside_capabilities(engine, caps, options, fmt, reasons)
    for option, unset in FIXED_OPTIONS:
        value = getattr(options, option)
        if option in reasons and value not in unset:
            raise UnsupportedOptionError(engine, option, value, reasons[option])


def _refuse_outside_capabilities(engine: str, caps: Capabilities, options: EngineOptions, fmt: str,
                                reasons: Mapping[str, object]) -> None:
    """Raise for a format, KV-cache dtype, speculative method, prefix cache or parallelism ``caps`` lacks."""
    if fmt not in caps.formats:
        raise UnsupportedOptionError(engine, "format", fmt, reasons.get("format", caps.formats))
    if not caps.accepts_kv_cache_dtype(options.kv_cache_dtype):
        raise UnsupportedOptionError(engine, "kv_cache_dtype", options.kv_cache_dtype,
                                     reasons.get("kv_cache_dtype", caps.kv_cache_dtypes))
    if options.speculative_method not in caps.speculative:
        raise UnsupportedOptionError(engine, "speculative", options.speculative,
                                     reasons.get("speculative", caps.speculative))
    if options.prefix_caching and not caps.prefix_caching:
        raise UnsupportedOptionError(engine, "prefix_caching", True, reasons.get("prefix_caching"))
    parallel = (options.tensor_parallel_size, options.pipeline_parallel_size, options.data_parallel_size)
    if any(size != 1 and kind not in caps.parallelism for kind, size in zip(PARALLEL_KINDS, parallel, strict=True)):
        raise UnsupportedOptionError(engine, "parallelism", parallel, reasons.get("parallelism", caps.parallelism))
    if options.api_server_count != 1 and not caps.api_servers:
        raise UnsupportedOptionError(engine, "api_server_count", options.api_server_count,
                                     reasons.get("api_server_count", "1 (one HTTP frontend, in the engine's own "
                                                 "process or server)"))
    if options.batch_invariant and not caps.batch_invariant:
        raise UnsupportedOptionError(engine, "batch_invariant", True,
                                     reasons.get("batch_invariant", f"False ({NOT_BATCH_INVARIANT})"))


def refuse_cuda_without_gpu(engine: str, options: EngineOptions) -> None:
    """Refuse ``device='cuda'`` where CUDA sees no GPU (:func:`backends.gpu.cuda_missing_reason`), so a matrix's GPU
    cells are skipped with the reason on a CPU machine instead of failing at load or in a CUDA build."""
    if options.device != "cuda":
        return
    reason = cuda_missing_reason()
    if reason:
        raise UnsupportedOptionError(engine, "device", "cuda", f"cpu on this machine ({reason})")
