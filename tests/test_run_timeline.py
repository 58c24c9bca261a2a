"""``bench run``'s trace and schedule scenarios: the matrix keys, one run each against the calibration server (the
load generator's ground truth; the scenario runner is under test, not a backend), the cell record, the report."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress

from backends.base import EngineOptions
from bench.load.arrivals import ScheduleArrival, TraceArrival
from bench.report.render import write_report
from bench.run.probes import MemorySampler
from bench.run.results import ScheduleResult, TraceResult, new_record
from bench.run.scenarios import CellRun
from bench.run.schema import ScheduleScenario, TraceScenario, validate_matrix
from bench.run.timeline_scenario import run_timeline_scenario, timeline_config
from tests.helpers import scripted_server

MOONCAKE = Path(__file__).parent / "data" / "traces" / "mooncake_sample.jsonl"
SCENARIOS: list[dict[str, Any]] = [
    {"kind": "trace", "name": "replay", "workload": {"kind": "trace", "path": str(MOONCAKE), "time_scale": 0.5,
                                                     "block_tokens": 16},
     "tokenizer": None, "slo": {"ttft_ms": 1000}, "window_s": 0.25},
    {"kind": "schedule", "name": "steps", "schedule": {"schedule": "0:4,1:8,2:40"}, "duration_s": 2.999,
     "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 16}, "tokenizer": None,
     "slo": {"ttft_ms": 1000}, "window_s": 1.0},
]


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def _cell_run(url: str, cell_dir: Path) -> CellRun:
    handle: Any = SimpleNamespace(url=url, model="calibration", alive=lambda: True,
                                  spec=SimpleNamespace(backend="calibration", tokenizer_path=None,
                                                      model_path=cell_dir / "no-checkpoint",
                                                      options=EngineOptions(), model_format="hf"),
                                  log_tail=lambda: "")
    progress = Progress(console=Console(file=io.StringIO()))
    return CellRun(handle=handle, cell_id="calibration__m__default__s0", cell_dir=cell_dir, seed=0, max_batch=8,
                   progress=progress, memory=MemorySampler(os.getpid()))


def test_matrix_keys_make_bench_load_configs(tmp_path: Path) -> None:
    matrix = validate_matrix({"models": ["m"], "backends": ["transformers"], "scenarios": SCENARIOS})
    trace, schedule = matrix.scenarios
    assert isinstance(trace, TraceScenario) and isinstance(schedule, ScheduleScenario)
    run = _cell_run("http://127.0.0.1:1", tmp_path)
    config = timeline_config(trace, run)
    assert isinstance(config.arrival, TraceArrival) and config.num_requests is None
    assert config.slo.ttft_ms == 1000 and config.window_s == 0.25 and config.model == "calibration"
    config = timeline_config(schedule, run)
    assert isinstance(config.arrival, ScheduleArrival) and config.duration_s == 2.999


def test_trace_and_schedule_cells_and_their_report(calib_url: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cell_dir = run_dir / "cells" / "calibration__m__default__s0"
    run = _cell_run(calib_url, cell_dir)
    matrix = validate_matrix({"models": ["m"], "backends": ["calibration"], "scenarios": SCENARIOS})
    results = {s.name: run_timeline_scenario(s, run) for s in matrix.scenarios}  # type: ignore[arg-type]
    record = new_record(cell_id=run.cell_id, model="m", backend="calibration", option_set="default", options={},
                        seed=0, scenario_names=list(results), status="ok", startup_s=0.0, scenarios=results)
    replay, steps = record.scenarios["replay"], record.scenarios["steps"]
    assert isinstance(replay, TraceResult) and isinstance(steps, ScheduleResult)
    assert replay.point.num_ok == 6 and sum(w.sent for w in replay.windows) == 6
    assert steps.point.num_ok == 4 + 8 + 40
    assert [w.target_rate for w in steps.windows[:3]] == [4, 8, 40]
    assert steps.knee is None  # the calibration server's 20 ms TTFT meets 1 s at every step
    (cell_dir / "cell.json").write_text(json.dumps(record.as_dict()))
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"run_id": "t", "matrix": matrix.model_dump(mode="json")}))
    write_report([run_dir], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Trace replay: goodput over time" in text and "Rate schedule: the latency knee" in text
    assert "0:4,1:8,2:40" in text
    assert (tmp_path / "report" / "goodput_over_time.png").exists()
    assert (tmp_path / "report" / "schedule_0.png").exists()
