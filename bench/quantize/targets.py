"""The ``--to`` targets of ``bench quantize``: what each one makes, with what, and where it can run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Tool = Literal["gguf", "gptqmodel", "llm-compressor", "load-time", "exllama"]


@dataclass(frozen=True)
class Target:
    """One quantization target; ``params`` go to the tool that makes it."""

    name: str
    format: str
    tool: Tool
    params: dict[str, Any] = field(default_factory=dict)
    gpu_only: bool = False
    summary: str = ""


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("gguf-f16", "gguf", "gguf", {"outtype": "f16"}, summary="llama.cpp GGUF, f16"),
    Target("gguf-q8_0", "gguf", "gguf", {"ftype": "Q8_0"}, summary="llama.cpp GGUF, Q8_0 (from the f16)"),
    Target("gguf-q4_k_m", "gguf", "gguf", {"ftype": "Q4_K_M"}, summary="llama.cpp GGUF, Q4_K_M (from the f16)"),
    Target("gptq-4bit", "gptq", "gptqmodel", {"method": "gptq"}, summary="GPTQ int4 g128 (GPTQModel)"),
    Target("awq-4bit", "awq", "gptqmodel", {"method": "awq"}, summary="AWQ int4 g128 GEMM (GPTQModel)"),
    Target("w4a16", "compressed-tensors", "llm-compressor", {"scheme": "W4A16", "algorithm": "gptq"},
           summary="compressed-tensors W4A16 via GPTQ (llm-compressor)"),
    Target("fp8", "compressed-tensors", "llm-compressor", {"scheme": "FP8_DYNAMIC", "algorithm": "rtn"},
           summary="compressed-tensors FP8 weights, dynamic FP8 activations (llm-compressor, data-free)"),
    Target("bnb-4bit", "bnb-4bit", "load-time", {"quant_type": "nf4"}, summary="bitsandbytes NF4 at load"),
    Target("bnb-8bit", "bnb-8bit", "load-time", {}, summary="bitsandbytes LLM.int8() at load"),
    Target("torchao-int8", "torchao-int8", "load-time", {"config": "Int8DynamicActivationInt8WeightConfig"},
           summary="torchao int8 dynamic activations + int8 weights at load"),
    Target("exl2", "exl2", "exllama", {"bits": 4.0}, gpu_only=True, summary="ExLlamaV2 EXL2 (CUDA only)"),
    Target("exl3", "exl3", "exllama", {"bits": 4.0}, gpu_only=True, summary="ExLlamaV3 EXL3 (CUDA only)"),
)}
