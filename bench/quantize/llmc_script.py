"""Runs INSIDE the llm-compressor venv (``python llmc_script.py job.json``); imports nothing from servebench.

job.json: {"src": HF dir, "out": dir, "scheme": "W4A16" | "FP8_DYNAMIC", "algorithm": "gptq" | "awq" | "rtn",
"texts": [calibration strings], "max_seq_length": int, "group_size": int | null}.
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


def _scheme(scheme: str, group_size: int | None) -> dict[str, Any]:
    """Keyword arguments naming the scheme: the preset, or W4A16 with another group size."""
    if scheme != "W4A16" or group_size in (None, 128):
        return {"scheme": scheme, "targets": "Linear"}
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
    return {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}}


def _recipe(scheme: str, algorithm: str, group_size: int | None) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    kwargs = {**_scheme(scheme, group_size), "ignore": ["lm_head"]}
    if algorithm == "gptq":
        return [GPTQModifier(**kwargs)]
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
    oneshot(model=model, recipe=_recipe(job["scheme"], job["algorithm"], job.get("group_size")), **kwargs)
    model.save_pretrained(job["out"], save_compressed=True)
    tokenizer.save_pretrained(job["out"])


if __name__ == "__main__":
    main(sys.argv[1])
