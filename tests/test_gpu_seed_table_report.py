"""The committed GPU seed tables (issue #15: reports/gpu-seed-table-h100, SmolLM2 in every format, and
reports/gpu-seed-table-8b-h100, the 8B shape's speed) recompute from their raw records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.load.config import LoadConfig
from bench.load.runner import rebuild_summary
from bench.report.render import write_report

REPORTS = Path(__file__).resolve().parent.parent / "reports"
# Each committed run and the quality references its report was rendered with (none: a speed-only run).
RUNS = {
    REPORTS / "gpu-seed-table-h100" / "gpu-seed-table": ["smollm2-135m-instruct-hf", "smollm2-135m-instruct-f16"],
    REPORTS / "gpu-seed-table-8b-h100" / "gpu-seed-table-8b": None,
}
SWEEP_POINTS = sorted(p for run in RUNS for p in run.glob("cells/*/load/*/summary.json"))
# The weights a decode step read, for MBU, where a point's load_config.json does not say (bench run has written
# them there since the 8B run): the checkpoints exist only on the device. The GGUFs' sizes are those its log lists
# (device-logs/call6-seed-table-8b.log); the bf16 safetensors are the Llama-3.1-8B shape's 8,030,261,248
# parameters at 2 bytes plus 33,880 bytes of the 4 shards' headers.
DEVICE_MODEL_BYTES = {
    "llama-3.1-8b-random": 2 * 8_030_261_248 + 33_880,
    "llama-3.1-8b-random-q8_0": 8_537_597_632,
    "llama-3.1-8b-random-q4_k_m": 4_917_561_024,
}


def _same(committed: Any, recomputed: Any, where: str) -> None:
    """Every value the committed summary holds, recomputed (floats to the last few bits: summation order);
    fields a later version added are not in the committed file and are not compared."""
    if isinstance(committed, dict):
        for key, value in committed.items():
            _same(value, recomputed.get(key), f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(committed) == len(recomputed), where
        for i, (a, b) in enumerate(zip(committed, recomputed, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(committed, float) and isinstance(recomputed, float):
        assert math.isclose(committed, recomputed, rel_tol=1e-9, abs_tol=1e-12), where
    else:
        assert committed == recomputed, where


@pytest.mark.parametrize("run", list(RUNS), ids=lambda p: p.name)
def test_the_report_renders_as_committed(run: Path, tmp_path: Path) -> None:
    write_report([run], tmp_path, quality_reference=RUNS[run])
    assert (tmp_path / "report.md").read_text() == (run / "report.md").read_text()


@pytest.mark.parametrize("summary", SWEEP_POINTS,
                         ids=lambda p: f"{p.parents[4].name}/{p.parent.parent.parent.name}/{p.parent.name}")
def test_every_sweep_point_recomputes_from_its_requests(summary: Path, tmp_path: Path) -> None:
    point = tmp_path / "point"
    shutil.copytree(summary.parent, point)  # gzipped requests.jsonl and server_metrics.jsonl, as committed
    saved = LoadConfig.model_validate(json.loads((point / "load_config.json").read_text())["config"])
    if saved.model_bytes is None and saved.model in DEVICE_MODEL_BYTES:
        saved = saved.model_copy(update={"model_bytes": DEVICE_MODEL_BYTES[saved.model]})
    rebuilt = rebuild_summary(point, config=saved).model_dump(mode="json")
    _same(json.loads(summary.read_text()), rebuilt, summary.parent.name)
