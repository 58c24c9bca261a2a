"""Weights an engine reads per decode step when it quantizes a 16-bit checkpoint at load (MBU's numerator).

A checkpoint's files say how many bytes a decode step reads, unless the engine quantizes them while loading:
vLLM's ``--quantization fp8`` keeps each decoder layer's linear weights in FP8 (one byte a parameter, plus a
scale) and leaves the embeddings, the LM head and the norms in 16 bits; ``bitsandbytes`` keeps them in 4 bits.
This reads the safetensors headers (names, dtypes, shapes; no tensor data) and counts those linear weights at
the method's width and every other tensor as stored.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

# Bytes a quantized parameter takes after the engine's at-load method (scales are left out: under 1%).
BYTES_PER_PARAM_AT_LOAD: dict[str, float] = {"fp8": 1.0, "bitsandbytes": 0.5}


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: per tensor its dtype, shape and data offsets."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def quantized_at_load(name: str, shape: list[int]) -> bool:
    """Whether at-load quantization converts this tensor: a 2-D weight inside a decoder layer (attention and MLP
    projections); not the embeddings, the LM head or the 1-D norms and biases."""
    return len(shape) == 2 and ".layers." in name and name.endswith(".weight")


def weight_bytes_at_load(folder: Path, quantization: str) -> int | None:
    """Bytes of weights after ``quantization`` at load of the 16-bit checkpoint in ``folder``; None for a method
    with no known width (:data:`BYTES_PER_PARAM_AT_LOAD`) or a folder without safetensors."""
    width = BYTES_PER_PARAM_AT_LOAD.get(quantization)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if width is None or not files:
        return None
    total = 0
    for file in files:
        for name, info in safetensors_header(file).items():
            start, end = info["data_offsets"]
            shape = info["shape"]
            total += math.ceil(math.prod(shape) * width) if quantized_at_load(name, shape) else end - start
    return total
