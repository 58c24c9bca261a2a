"""Run a matrix: for each cell start its server once, run every scenario through it, record, go on.

A cell that fails is recorded (``cell.json`` with ``status: failed``) and the matrix continues. Each
finished cell is written when it ends, so ``--resume`` skips it and a killed run loses at most the cell
in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.load.arrivals import ConcurrencyArrival, PoissonArrival
from bench.load.config import LoadConfig
from bench.load.runner import run_load
from bench.models.registry import Registry
from bench.run import environment
from bench.run.cells import Cell, expand
from bench.run.schema import EvalScenario, LoadPoint, LoadScenario, Matrix
from servers.launch import LaunchError, ServerHandle, build_spec, free_port, running_server

FINAL = ("ok", "failed", "skipped")


@dataclass
class RunPaths:
    """Where a run's files go."""

    root: Path

    def cell(self, cell: Cell) -> Path:
        """The folder of one cell."""
        return self.root / "cells" / cell.cell_id


def write_run_yaml(run_dir: Path, matrix: Matrix, run_id: str) -> None:
    """The resolved config plus the environment; a run is reproducible from it."""
    data = {"run_id": run_id, "created_unix": time.time(), "matrix": matrix.model_dump(mode="json"),
            "environment": environment.capture()}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def read_cell(path: Path) -> dict[str, Any] | None:
    """A cell's record, or None if it never finished."""
    try:
        data: dict[str, Any] = json.loads((path / "cell.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if data.get("status") in FINAL else None


def _write_cell(path: Path, cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    record = {"cell_id": cell.cell_id, "model": cell.model, "backend": cell.backend,
              "option_set": cell.option_set.name, "options": cell.option_set.options.model_dump(mode="json"),
              "seed": cell.seed, "status": status, **extra}
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "cell.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path / "cell.json")
    return record


def _arrival(point: LoadPoint) -> ConcurrencyArrival | PoissonArrival:
    if point.concurrency is not None:
        return ConcurrencyArrival(n=point.concurrency)
    assert point.rate is not None
    return PoissonArrival(rate=point.rate)


def _run_load_scenario(scenario: LoadScenario, handle: ServerHandle, cell: Cell, out: Path,
                       progress: Progress) -> dict[str, Any]:
    results = {}
    for point in scenario.points:
        if not handle.alive():
            raise LaunchError(f"{cell.backend} server died during the run:\n{handle.log_tail()}")
        progress.console.print(f"  {cell.cell_id} · {scenario.name} · {point.label}")
        config = LoadConfig(url=handle.url, model=handle.model, api=scenario.api, workload=scenario.workload,
                            arrival=_arrival(point), num_requests=scenario.requests_per_point,
                            warmup=scenario.warmup, duration_s=scenario.duration_s, seed=cell.seed,
                            slo=scenario.slo)
        summary = run_load(config, out / point.label)
        results[point.label] = summary.model_dump(mode="json")
    return results


def _run_eval_scenario(scenario: EvalScenario, handle: ServerHandle, cell: Cell, out: Path) -> dict[str, Any]:
    from bench.evals.config import EvalConfig
    from bench.evals.runner import run_eval

    config = EvalConfig(url=handle.url, model=handle.model, task=scenario.task, limit=scenario.limit,
                        seed=cell.seed, shots=scenario.shots, api=scenario.api, mode=scenario.mode,
                        concurrency=scenario.concurrency)
    return run_eval(config, out).model_dump(mode="json")


def _run_cell(matrix: Matrix, registry: Registry, cell: Cell, cell_dir: Path, progress: Progress) -> dict[str, Any]:
    spec = build_spec(registry, cell.backend, cell.model, cell.option_set.options, port=free_port())
    started = time.monotonic()
    with running_server(spec, registry, cell_dir / "server.log", timeout_s=matrix.server_timeout_s) as handle:
        scenarios: dict[str, Any] = {}
        for scenario in matrix.scenarios:
            out = cell_dir / scenario.name
            if isinstance(scenario, LoadScenario):
                scenarios[scenario.name] = {"kind": "load", "points": _run_load_scenario(
                    scenario, handle, cell, out, progress)}
            else:
                scenarios[scenario.name] = {"kind": "eval", "result": _run_eval_scenario(scenario, handle, cell, out)}
        return {"startup_s": handle.startup_s, "wall_s": time.monotonic() - started, "scenarios": scenarios,
                "model_format": spec.model_format}


def run_matrix(matrix: Matrix, registry: Registry, run_dir: Path, console: Console, resume: bool = False,
               ) -> list[dict[str, Any]]:
    """Run every cell not already finished; returns the cell records in matrix order."""
    paths = RunPaths(run_dir)
    cells = expand(matrix, registry)
    records: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("matrix", total=len(cells))
        for cell in cells:
            cell_dir = paths.cell(cell)
            done = read_cell(cell_dir) if resume else None
            if done is None:
                progress.update(task, description=f"{cell.backend} · {cell.model} · {cell.option_set.name}")
                done = _execute(matrix, registry, cell, cell_dir, progress)
            records.append(done)
            progress.advance(task)
    return records


def _execute(matrix: Matrix, registry: Registry, cell: Cell, cell_dir: Path, progress: Progress) -> dict[str, Any]:
    if cell.skip_reason is not None:
        progress.console.print(f"[yellow]skip[/yellow] {cell.cell_id}: {cell.skip_reason}")
        return _write_cell(cell_dir, cell, "skipped", reason=cell.skip_reason)
    try:
        result = _run_cell(matrix, registry, cell, cell_dir, progress)
    except Exception as exc:  # a failed cell is data; the matrix goes on
        progress.console.print(f"[red]failed[/red] {cell.cell_id}: {str(exc).splitlines()[0]}")
        return _write_cell(cell_dir, cell, "failed", error=f"{type(exc).__name__}: {exc}")
    return _write_cell(cell_dir, cell, "ok", **result)
