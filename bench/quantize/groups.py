"""Quantization group sizes that fit a model's layer widths."""

from __future__ import annotations

import json
from pathlib import Path


def group_size_for(src: Path, preferred: int = 128) -> int:
    """The largest group size (128, 64, 32) dividing every linear input width (SmolLM2's 576 needs 64)."""
    config = json.loads((src / "config.json").read_text())
    widths = [int(config[k]) for k in ("hidden_size", "intermediate_size") if k in config]
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and head_dim:
        widths.append(int(heads) * int(head_dim))
    for size in (preferred, 64, 32):
        if all(w % size == 0 for w in widths):
            return size
    raise ValueError(f"no group size in (128, 64, 32) divides the layer widths {widths} of {src}")
