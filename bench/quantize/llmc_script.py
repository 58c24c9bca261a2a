"""Runs INSIDE the llm-compressor venv (``python llmc_script.py job.json``); imports nothing from servebench.

job.json: {"src": HF dir, "out": dir, "scheme": "W4A16" | "FP8_DYNAMIC" | "W8A8",
"algorithm": "gptq" | "awq" | "rtn" | "smoothquant", "texts": [calibration strings], "max_seq_length": int,
"group_size": int | null, "smoothing_strength": float | null,
"plan": null | {"ignore": [module names kept unquantized], "bits": {"8": [module names], "4": [...]}}}.
Writes a compressed-tensors checkpoint to ``out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _no_pinning_without_accelerator() -> None:
    """AWQ pins cached activations for faster host-to-device copies; on a CPU-only torch that raises."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


def _weights(bits: int, group_size: int | None) -> Any:
    """Symmetric int weights: per group of ``group_size`` (W4A16-like), else per channel."""
    from compressed_tensors.quantization import QuantizationArgs

    if group_size is None:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="channel")
    return QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group_size)


def _scheme(scheme: str, group_size: int | None, plan: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments naming the scheme: the preset, W4A16 with another group size, or one group per bit width
    of a mixed-precision plan (each group targets its modules by their exact names)."""
    if plan and plan.get("bits"):
        from compressed_tensors.quantization import QuantizationScheme

        groups = {f"group_{bits}": QuantizationScheme(targets=names, weights=_weights(int(bits), group_size))
                  for bits, names in sorted(plan["bits"].items())}
        return {"config_groups": groups}
    if scheme != "W4A16" or group_size in (None, 128):
        return {"scheme": scheme, "targets": "Linear"}
    from compressed_tensors.quantization import QuantizationScheme

    return {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"], weights=_weights(4, group_size))}}


def _recipe(job: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    plan, algorithm = job.get("plan"), job["algorithm"]
    kwargs = {**_scheme(job["scheme"], job.get("group_size"), plan),
              "ignore": ["lm_head", *((plan or {}).get("ignore") or [])]}
    if algorithm == "gptq":
        return [GPTQModifier(**kwargs)]
    if algorithm == "smoothquant":
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=job["smoothing_strength"]), GPTQModifier(**kwargs)]
    if algorithm == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        _no_pinning_without_accelerator()
        return [AWQModifier(), QuantizationModifier(**kwargs)]
    return [QuantizationModifier(**kwargs)]


def _dataset(tokenizer: Any, texts: list[str], max_len: int) -> Any:
    from datasets import Dataset

    data = Dataset.from_dict({"text": texts})
    return data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=max_len,
                                          add_special_tokens=False), remove_columns=["text"])


def main(job_file: str) -> None:
    """Quantize one checkpoint as described by ``job_file``."""
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = json.loads(Path(job_file).read_text())
    tokenizer = AutoTokenizer.from_pretrained(job["src"])
    model = AutoModelForCausalLM.from_pretrained(job["src"], dtype="auto")
    kwargs: dict[str, Any] = {}
    if job["algorithm"] != "rtn":
        texts = job["texts"]
        kwargs = {"dataset": _dataset(tokenizer, texts, job["max_seq_length"]),
                  "num_calibration_samples": len(texts), "max_seq_length": job["max_seq_length"]}
    oneshot(model=model, recipe=_recipe(job), **kwargs)
    model.save_pretrained(job["out"], save_compressed=True)
    tokenizer.save_pretrained(job["out"])


if __name__ == "__main__":
    main(sys.argv[1])
