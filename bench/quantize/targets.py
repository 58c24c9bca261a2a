"""The ``--to`` targets of ``bench quantize``: what each one makes, with what, and where it can run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Tool = Literal["gguf", "gptqmodel", "llm-compressor", "load-time", "exllama"]

# The SmoothQuant paper's alpha for Llama-family models; 0.5 (llm-compressor's default) moves less of the
# activation outliers into the weights.
SMOOTHING_STRENGTH = 0.8


@dataclass(frozen=True)
class Target:
    """One quantization target; ``params`` go to the tool that makes it."""

    name: str
    format: str
    tool: Tool
    params: dict[str, Any] = field(default_factory=dict)
    gpu_only: bool = False
    summary: str = ""
    bits: int | None = None


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("gguf-f16", "gguf", "gguf", {"outtype": "f16"}, summary="llama.cpp GGUF, f16"),
    Target("gguf-q8_0", "gguf", "gguf", {"ftype": "Q8_0"}, summary="llama.cpp GGUF, Q8_0 (from the f16)", bits=8),
    Target("gguf-q4_k_m", "gguf", "gguf", {"ftype": "Q4_K_M"}, summary="llama.cpp GGUF, Q4_K_M (from the f16)",
           bits=4),
    Target("gptq-4bit", "gptq", "gptqmodel", {"method": "gptq"}, summary="GPTQ int4 (GPTQModel)", bits=4),
    Target("awq-4bit", "awq", "gptqmodel", {"method": "awq"}, summary="AWQ int4 GEMM (GPTQModel)", bits=4),
    Target("w4a16", "compressed-tensors", "llm-compressor", {"scheme": "W4A16", "algorithm": "gptq"},
           summary="compressed-tensors W4A16 via GPTQ (llm-compressor)", bits=4),
    Target("fp8", "compressed-tensors", "llm-compressor", {"scheme": "FP8_DYNAMIC", "algorithm": "rtn"},
           summary="compressed-tensors FP8 weights, dynamic FP8 activations (llm-compressor, data-free)", bits=8),
    Target("w8a8-smoothquant", "compressed-tensors", "llm-compressor",
           {"scheme": "W8A8", "algorithm": "smoothquant", "smoothing_strength": SMOOTHING_STRENGTH},
           summary="compressed-tensors W8A8 int8 (SmoothQuant, then GPTQ; llm-compressor)", bits=8),
    Target("w8a8-int8", "compressed-tensors", "llm-compressor", {"scheme": "W8A8", "algorithm": "gptq"},
           summary="compressed-tensors W8A8 int8 via GPTQ, no smoothing (llm-compressor)", bits=8),
    Target("bnb-4bit", "bnb-4bit", "load-time", {"quant_type": "nf4"}, summary="bitsandbytes NF4 at load"),
    Target("bnb-8bit", "bnb-8bit", "load-time", {}, summary="bitsandbytes LLM.int8() at load"),
    Target("torchao-int8", "torchao-int8", "load-time", {"config": "Int8DynamicActivationInt8WeightConfig"},
           summary="torchao int8 dynamic activations + int8 weights at load"),
    Target("hqq-4bit", "hqq", "load-time", {"nbits": 4}, summary="HQQ 4-bit at load (data-free)", bits=4),
    Target("hqq-8bit", "hqq", "load-time", {"nbits": 8}, summary="HQQ 8-bit at load (data-free)", bits=8),
    # bits: the default bits per weight; `bench quantize --bits` asks for another rate.
    Target("exl2", "exl2", "exllama", {"bits": 4.0}, gpu_only=True, summary="ExLlamaV2 EXL2 (CUDA only)"),
    Target("exl3", "exl3", "exllama", {"bits": 4.0}, gpu_only=True, summary="ExLlamaV3 EXL3 (CUDA only)"),
)}
