"""Light config for the Transformers engine: capabilities and option checks (no torch import)."""

from __future__ import annotations

from backends.base import Capabilities, EngineOptions
from backends.checks import refuse_cuda_without_gpu, refuse_unsupported
from backends.errors import UnsupportedOptionError
from backends.registry import module_available

NAME = "transformers"

CAPABILITIES = Capabilities(
    formats=("hf", "gguf", "gptq", "awq", "compressed-tensors", "bnb-4bit", "bnb-8bit", "torchao-int8", "hqq"),
    kv_cache_dtypes=("auto",),
    speculative=("none",),
    prefix_caching=False,
    batching="continuous",
    devices=("cpu", "cuda"),
    notes="GGUF is dequantized at load; bnb/torchao/HQQ quantize at load; the KV cache is dense and left-padded.",
)

# Python module each quantized format needs at load time, and the extra that installs it.
FORMAT_MODULES = {"gptq": ("gptqmodel", "quantize"), "awq": ("gptqmodel", "quantize"),
                  "compressed-tensors": ("compressed_tensors", "quantize"),
                  "bnb-4bit": ("bitsandbytes", "train"), "bnb-8bit": ("bitsandbytes", "train"),
                  "torchao-int8": ("torchao", "train"), "hqq": ("hqq", "quantize")}

# Why each option is refused (the hint of the error; formats, KV dtypes and speculation list CAPABILITIES').
REFUSALS = {
    "prefix_caching": "no prefix cache in this engine",
    "parallelism": "single device only",
    "kv_cache_memory_bytes": "the cache grows with the batch; bound it with max_batch",
    "quantization": "formats from models.yaml",
    "batch_invariant": "False (no batch-invariant kernels: the padded batch a request joins changes its "
                       "reductions; serve one request at a time (eval concurrency 1) for repeatable replies)",
}


def load_time_quantization(fmt: str, compute_dtype: object) -> object | None:
    """The transformers quantization config that makes ``fmt`` at load (bnb, torchao), else None."""
    if fmt in ("bnb-4bit", "bnb-8bit"):
        from transformers import BitsAndBytesConfig

        if fmt == "bnb-8bit":
            return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",  # type: ignore[no-untyped-call]
                                  bnb_4bit_compute_dtype=compute_dtype)
    if fmt == "torchao-int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
    return None


def availability() -> str | None:
    """Why the engine cannot run here, or None."""
    for module in ("torch", "transformers"):
        if not module_available(module):
            return f"{module} is not installed (pip install 'servebench[transformers]')"
    return None


def validate(options: EngineOptions, fmt: str) -> None:
    """Refuse what the engine cannot honour."""
    if fmt in FORMAT_MODULES and not module_available(FORMAT_MODULES[fmt][0]):
        module, extra = FORMAT_MODULES[fmt]
        raise UnsupportedOptionError(NAME, "format", fmt, f"needs {module}: pip install 'servebench[{extra}]'")
    refuse_unsupported(NAME, CAPABILITIES, options, fmt, REFUSALS)
    if options.device == "cuda" and options.threads is not None:  # device=auto is checked at load, on the device
        raise UnsupportedOptionError(NAME, "threads", options.threads, "only on CPU; the model runs on cuda")
    refuse_cuda_without_gpu(NAME, options)
