"""HQQ targets: nothing is quantized ahead of time (HQQ is data-free); the checkpoint is the source's files, linked,
plus the settings the Transformers engine quantizes with at load (backends.transformers.hqq).

Not named ``hqq.py``: llmc_script.py runs with this folder first on ``sys.path``, where it would shadow the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backends.transformers.hqq import HQQ_FILE


def write_hqq_checkpoint(src: Path, out: Path, nbits: int, group_size: int) -> dict[str, Any]:
    """Link ``src``'s files into ``out`` and write :data:`HQQ_FILE`; returns the recipe."""
    for item in src.iterdir():
        (out / item.name).symlink_to(item.resolve())
    settings = {"nbits": nbits, "group_size": group_size, "axis": 1, "skip_modules": ["lm_head"]}
    (out / HQQ_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return {"tool": "bench quantize", "library": "hqq 0.2.8 (transformers HqqConfig)", "load_time": True,
            **settings}
