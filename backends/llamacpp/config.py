"""Light config for ``llama-server``: capabilities, option checks and defaults (no heavy imports)."""

from __future__ import annotations

import os
import shutil

from backends.base import Capabilities, EngineOptions
from backends.checks import refuse_cuda_without_gpu, refuse_unsupported

NAME = "llamacpp"

CAPABILITIES = Capabilities(
    formats=("gguf",),
    kv_cache_dtypes=("auto", "q8", "q4"),
    speculative=("none", "ngram", "draft"),
    prefix_caching=True,
    batching="continuous",
    devices=("cpu", "cuda"),
    parallelism=(),
    notes="llama-server built from llama-cpp-python's vendored llama.cpp; max_batch = parallel slots, "
          "each with max_model_len tokens of KV (-c = max_model_len x max_batch); q8/q4 KV turn on flash "
          "attention; ngram = prompt lookup (ngram-simple).",
    prompt_logprobs=False,  # our llama-server ignores echo (newer ones refuse it: "Only no echo is supported")
)

# Why each refused value is refused; the text is part of the error users see (and the tests check it).
REFUSALS = {
    "format": "llama-server loads GGUF only; derive one with `bench models prepare` or `bench quantize`",
    "kv_cache_dtype": "llama.cpp has no fp8 KV cache; use q8 (q8_0) or q4 (q4_0) (q6 and k<bits>v<bits> are "
                      "ExLlama caches with no llama-server mapping here)",
    "speculative": "llama-server does prompt-lookup (ngram) and draft-model speculation; "
                   "EAGLE heads need a GGUF conversion servebench does not make",
    "parallelism": "llama-server runs one model replica; tensor/pipeline/data parallel must be 1",
    "dtype": "the weights' dtype is fixed by the GGUF file; pick another GGUF from models.yaml",
    "kv_cache_memory_bytes": "llama-server sizes its KV cache in tokens; set max_model_len and max_batch",
    "quantization": "the quantization is the GGUF file's own; pick the GGUF in models.yaml",
    "batch_invariant": "False (llama.cpp has no batch-invariant kernels; serve one request at a time (eval "
                       "concurrency 1) for repeatable replies)",
}


def availability() -> str | None:
    """Why ``llama-server`` cannot run here, or None."""
    from backends.llamacpp.build import server_binary

    if any(server_binary(flavor).is_file() for flavor in ("cpu", "cuda")):
        return None
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH, so llama-server cannot be built"
    return None


def validate(options: EngineOptions, fmt: str) -> None:
    """Refuse what ``llama-server`` cannot honour (every option is either mapped or refused)."""
    if options.quantization == "gguf":  # names the GGUF file's own quantization: nothing to refuse
        options = options.model_copy(update={"quantization": None})
    refuse_unsupported(NAME, CAPABILITIES, options, fmt, REFUSALS)
    refuse_cuda_without_gpu(NAME, options)


def default_threads() -> int:
    """One fewer than the cores this process may use (at least 1).

    A spare core matters: ggml's worker threads spin while they wait, and on a shared box a thread per core
    collapses throughput as soon as anything else (the HTTP thread, the load generator) needs a core.
    """
    return max(1, len(os.sched_getaffinity(0)) - 1)
