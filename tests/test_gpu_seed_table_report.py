"""The committed GPU seed table (reports/gpu-seed-table-h100, issue #15) recomputes from its raw records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.load.runner import rebuild_summary
from bench.report.render import write_report

RUN = Path(__file__).resolve().parent.parent / "reports" / "gpu-seed-table-h100" / "gpu-seed-table"
REFERENCES = ["smollm2-135m-instruct-hf", "smollm2-135m-instruct-f16"]
SWEEP_POINTS = sorted(RUN.glob("cells/*/load/*/summary.json"))


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


def test_the_report_renders_as_committed(tmp_path: Path) -> None:
    write_report([RUN], tmp_path, quality_reference=REFERENCES)
    assert (tmp_path / "report.md").read_text() == (RUN / "report.md").read_text()


@pytest.mark.parametrize("summary", SWEEP_POINTS, ids=lambda p: f"{p.parent.parent.parent.name}/{p.parent.name}")
def test_every_sweep_point_recomputes_from_its_requests(summary: Path, tmp_path: Path) -> None:
    point = tmp_path / "point"
    shutil.copytree(summary.parent, point)  # gzipped requests.jsonl and server_metrics.jsonl, as committed
    rebuilt = rebuild_summary(point).model_dump(mode="json")
    _same(json.loads(summary.read_text()), rebuilt, summary.parent.name)
