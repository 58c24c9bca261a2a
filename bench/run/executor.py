"""Run a matrix: for each cell start its server once, run every scenario through it, record, go on.

A cell that fails is recorded (``cell.json`` with ``status: failed``) and the matrix continues. Each
finished cell is written when it ends, so ``--resume`` skips it and a killed run loses at most the cell
in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.models.registry import Registry
from bench.run import environment
from bench.run.cells import Cell, expand, select
from bench.run.probes import GIB, MemorySampler, kv_info
from bench.run.scenarios import (
    CellRun,
    run_eval_scenario,
    run_kv_scenario,
    run_load_scenario,
    run_speculative_scenario,
)
from bench.run.schema import (
    KVCacheScenario,
    LoadScenario,
    Matrix,
    Scenario,
    SpeculativeScenario,
    validate_matrix,
)
from servers.launch import build_spec, free_port, running_server

FINAL = ("ok", "failed", "skipped")


@dataclass
class RunPaths:
    """Where a run's files go."""

    root: Path

    def cell(self, cell: Cell) -> Path:
        """The folder of one cell."""
        return self.root / "cells" / cell.cell_id


def read_run_matrix(run_dir: Path) -> Matrix:
    """The resolved matrix a run folder was started with (for ``--resume``)."""
    data = yaml.safe_load((run_dir / "run.yaml").read_text())
    return validate_matrix(data["matrix"], str(run_dir / "run.yaml"))


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
              "option_set": cell.option_set.name, "base_option_set": cell.base_option_set,
              "options": cell.option_set.options.model_dump(mode="json"), "seed": cell.seed,
              "scenario_names": list(cell.scenarios), "status": status, **extra}
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "cell.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path / "cell.json")
    return record


def _run_scenario(scenario: Scenario, run: CellRun, cell: Cell) -> dict[str, Any]:
    if isinstance(scenario, LoadScenario):
        return run_load_scenario(scenario, run)
    if isinstance(scenario, KVCacheScenario):
        return run_kv_scenario(scenario, run)
    if isinstance(scenario, SpeculativeScenario):
        return run_speculative_scenario(scenario, run, cell.option_set.options.speculative)
    return run_eval_scenario(scenario, run)


def _run_cell(matrix: Matrix, registry: Registry, cell: Cell, cell_dir: Path, progress: Progress) -> dict[str, Any]:
    """Start the cell's server once and run its scenarios; a failed scenario is recorded and the rest go on."""
    spec = build_spec(registry, cell.backend, cell.model, cell.option_set.options, port=free_port())
    started = time.monotonic()
    with running_server(spec, registry, cell_dir / "server.log", timeout_s=matrix.server_timeout_s) as handle, \
            MemorySampler(handle.process.pid) as memory:
        options = cell.option_set.options
        run = CellRun(handle, cell.cell_id, cell_dir, cell.seed, options.max_batch, progress, memory,
                      options.tensor_parallel_size * options.pipeline_parallel_size)
        kv = kv_info(handle.url + "/metrics", handle.log_path)
        scenarios: dict[str, Any] = {}
        for scenario in matrix.scenarios:
            if scenario.name not in cell.scenarios:
                continue
            try:
                scenarios[scenario.name] = _run_scenario(scenario, run, cell)
            except Exception as exc:  # a failed scenario is data; the cell goes on with the next one
                progress.console.print(f"[red]failed[/red] {cell.cell_id} · {scenario.name}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                scenarios[scenario.name] = {"kind": scenario.kind, "status": "failed",
                                            "error": f"{type(exc).__name__}: {exc}"}
        return {"startup_s": handle.startup_s, "wall_s": time.monotonic() - started, "scenarios": scenarios,
                "model_format": spec.model_format, "rss_peak_gib": memory.overall_peak / GIB, "kv": kv.as_dict()}


def run_matrix(matrix: Matrix, registry: Registry, run_dir: Path, console: Console, resume: bool = False,
               only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every cell not already finished (those matching ``only``, when given); returns their records in matrix
    order."""
    paths = RunPaths(run_dir)
    cells = select(expand(matrix, registry), only)
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
        progress.console.print(f"[red]failed[/red] {cell.cell_id}: {(str(exc) or type(exc).__name__).splitlines()[0]}")
        return _write_cell(cell_dir, cell, "failed", error=f"{type(exc).__name__}: {exc}")
    failed = [f"{name}: {s['error']}" for name, s in result["scenarios"].items() if s.get("status") == "failed"]
    if failed:  # the scenarios that worked stay in the record and in the report
        return _write_cell(cell_dir, cell, "failed", error="; ".join(failed), **result)
    return _write_cell(cell_dir, cell, "ok", **result)
