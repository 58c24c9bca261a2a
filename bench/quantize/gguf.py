"""GGUF targets: the vendored ``convert_hf_to_gguf.py`` and ``llama_model_quantize`` (shared with prepare).

A mixed-precision plan becomes one ``--tensor-type`` override per linear tensor (``llama_model_quantize_params``'
``tt_overrides``), so each tensor gets exactly the type the plan says rather than the Q4_K_M mixture's choice;
the source is then converted to bf16, so that kept tensors stay bf16 rather than pass through f16.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from backends.prepare import convert_hf_to_gguf, quantize_gguf
from bench.quantize.mixed import MixedPrecisionError, Plan

# ggml types (ggml.h) for a plan's precisions.
GGML_TYPES = {"bf16": 30, 8: 8, 4: 12}
# HF module suffix -> llama.cpp tensor name, for Llama-family decoder layers.
TENSOR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}
LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_tensor(module: str) -> str:
    """The GGUF tensor name of an HF linear module (``lm_head`` is ``output``)."""
    if module == "lm_head":
        return "output.weight"
    found = LAYER_MODULE.match(module)
    if not found or found.group(2) not in TENSOR_NAMES:
        raise MixedPrecisionError(f"no GGUF tensor name is known for {module!r} (Llama-family layers only)")
    return f"blk.{found.group(1)}.{TENSOR_NAMES[found.group(2)]}.weight"


def tensor_types(plan: Plan) -> dict[str, int]:
    """The overrides: an anchored regex per linear tensor -> its ggml type (``output`` matches nothing where the
    head is tied to the embeddings, as in SmolLM2)."""
    return {f"^{re.escape(gguf_tensor(m))}$": GGML_TYPES[p] for m, p in plan.modules.items()}


def written_types(gguf_file: Path, plan: Plan) -> dict[str, str]:
    """Each planned tensor's type as written in ``gguf_file`` (read back, not assumed)."""
    from gguf import GGUFReader

    wanted = {gguf_tensor(m) for m in plan.modules}
    return {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_file)).tensors if t.name in wanted}


def quantize_to_gguf(src: Path, out_file: Path, params: dict[str, Any], plan: Plan | None = None) -> dict[str, Any]:
    """Write ``out_file``: an f16 conversion, or a llama.cpp quantization of a temporary f16 (bf16 with a plan)."""
    recipe: dict[str, Any] = {"tool": "bench quantize", "library": "llama.cpp (vendored in llama-cpp-python)"}
    if "outtype" in params:
        convert_hf_to_gguf(src, out_file, params["outtype"])
        return {**recipe, "step": "convert_hf_to_gguf", "outtype": params["outtype"]}
    outtype = "bf16" if plan else "f16"
    # Quantize from f16, never from an already-quantized GGUF (requantizing damages answers).
    with tempfile.TemporaryDirectory(dir=out_file.parent) as tmp:
        base = Path(tmp) / f"{outtype}.gguf"
        convert_hf_to_gguf(src, base, outtype)
        quantize_gguf(base, out_file, params["ftype"], tensor_types=tensor_types(plan) if plan else None)
    recipe = {**recipe, "step": f"convert_hf_to_gguf ({outtype}) + llama_model_quantize", "ftype": params["ftype"]}
    return {**recipe, "tensor_types": written_types(out_file, plan)} if plan else recipe
