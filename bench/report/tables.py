"""Rows for the report, read from a run folder's ``cells/*/cell.json`` (pure apart from reading files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class LoadRow:
    """One load point of one cell."""

    run: str
    cell: str
    backend: str
    model: str
    options: str
    scenario: str
    point: str
    summary: dict[str, Any]
    startup_s: float | None

    def stat(self, metric: str, key: str) -> float | None:
        """``summary[metric][key]``, e.g. ``("ttft_ms", "p50")``."""
        value = (self.summary.get(metric) or {}).get(key)
        return None if value is None else float(value)


@dataclass(frozen=True)
class EvalRow:
    """One eval of one cell."""

    run: str
    cell: str
    backend: str
    model: str
    options: str
    result: dict[str, Any]


@dataclass(frozen=True)
class CellStatus:
    """A cell that did not produce results, and why."""

    run: str
    cell: str
    status: str
    reason: str


@dataclass
class RunData:
    """Everything the report shows for one run."""

    run_dir: Path
    run_id: str
    meta: dict[str, Any]
    loads: list[LoadRow]
    evals: list[EvalRow]
    problems: list[CellStatus]


def _cells(run_dir: Path) -> Iterator[dict[str, Any]]:
    for path in sorted((run_dir / "cells").glob("*/cell.json")):
        try:
            yield json.loads(path.read_text())
        except json.JSONDecodeError:
            continue


def load_run(run_dir: Path) -> RunData:
    """Read a run folder."""
    meta: dict[str, Any] = {}
    if (run_dir / "run.yaml").exists():
        meta = yaml.safe_load((run_dir / "run.yaml").read_text()) or {}
    run_id = str(meta.get("run_id") or run_dir.name)
    data = RunData(run_dir, run_id, meta, [], [], [])
    for cell in _cells(run_dir):
        _add_cell(data, cell)
    return data


def _add_cell(data: RunData, cell: dict[str, Any]) -> None:
    key = (data.run_id, cell["cell_id"], cell["backend"], cell["model"], cell["option_set"])
    if cell["status"] != "ok":
        reason = cell.get("reason") or cell.get("error") or ""
        data.problems.append(CellStatus(data.run_id, cell["cell_id"], cell["status"], str(reason).splitlines()[0]))
        return
    for name, scenario in cell.get("scenarios", {}).items():
        if scenario["kind"] == "load":
            for point, summary in scenario["points"].items():
                data.loads.append(LoadRow(*key, name, point, summary, cell.get("startup_s")))
        elif scenario["kind"] == "eval":
            data.evals.append(EvalRow(*key, scenario["result"]))


def cost_per_million(output_tok_s: float | None, gpu_hour_usd: float | None) -> float | None:
    """USD per 1M output tokens at a throughput and an hourly price."""
    if not output_tok_s or gpu_hour_usd is None:
        return None
    return gpu_hour_usd / 3600.0 / output_tok_s * 1e6
