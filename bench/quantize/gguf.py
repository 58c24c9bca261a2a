"""GGUF targets: the vendored ``convert_hf_to_gguf.py`` and ``llama_model_quantize`` (shared with prepare)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from backends.prepare import convert_hf_to_gguf, quantize_gguf


def quantize_to_gguf(src: Path, out_file: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write ``out_file``: an f16 conversion, or a llama.cpp quantization of a temporary f16 one."""
    recipe: dict[str, Any] = {"tool": "bench quantize", "library": "llama.cpp (vendored in llama-cpp-python)"}
    if "outtype" in params:
        convert_hf_to_gguf(src, out_file, params["outtype"])
        return {**recipe, "step": "convert_hf_to_gguf", "outtype": params["outtype"]}
    # Quantize from f16, never from an already-quantized GGUF (requantizing damages answers).
    with tempfile.TemporaryDirectory(dir=out_file.parent) as tmp:
        f16 = Path(tmp) / "f16.gguf"
        convert_hf_to_gguf(src, f16, "f16")
        quantize_gguf(f16, out_file, params["ftype"])
    return {**recipe, "step": "convert_hf_to_gguf + llama_model_quantize", "ftype": params["ftype"]}
