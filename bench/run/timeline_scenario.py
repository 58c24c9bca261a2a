"""Trace replay and rate-schedule scenarios: one ``bench load`` run per cell, kept with its time series."""

from __future__ import annotations

from typing import Any

from bench.load.config import LoadConfig
from bench.load.runner import run_load
from bench.metrics.timeseries import TIMESERIES_FILE, TimeSeries
from bench.run.scenarios import CellRun
from bench.run.schema import ScheduleScenario, TraceScenario


def timeline_config(scenario: TraceScenario | ScheduleScenario, run: CellRun) -> LoadConfig:
    """The scenario's ``bench load`` options against this cell's server, seed and GPUs."""
    return run.scenario_config(scenario, scenario.arrival())


def run_timeline_scenario(scenario: TraceScenario | ScheduleScenario, run: CellRun) -> dict[str, Any]:
    """The run, its point (summary, folder, memory) and its time series; a schedule's knee."""
    folder = run.cell_dir / scenario.name
    config = timeline_config(scenario, run)
    run.check_alive()
    run.memory.take_peak()
    run.say(f"{scenario.name} · {config.arrival.describe()}")
    point = run.point(run_load(config, folder), folder)
    series = TimeSeries.model_validate_json((folder / TIMESERIES_FILE).read_text())
    return {"kind": scenario.kind, "arrival": config.arrival.describe(), "point": point,
            **series.model_dump(mode="json")}
