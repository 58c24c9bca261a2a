"""Run a matrix: for each cell start its server once, run every scenario through it, record, go on.

A cell that fails is recorded (``cell.json`` with ``status: failed``) and the matrix continues. Each
finished cell is written when it ends, so a killed run loses at most the cell in flight. ``--resume`` keeps
the ``ok`` and ``skipped`` cells and runs again the ``failed`` ones (a server that did not start is more
often a passing condition than a property of the cell) unless told to keep them, and notes in ``run.yaml``
when it resumed and what it retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backends.checkpoints import Registry, RegistryError, model_bytes_of
from backends.net import free_port
from bench.run import environment
from bench.run.cells import Cell, expand, select
from bench.run.probes import GIB, MemorySampler
from bench.run.results import CELL_FILE, FINAL, RUN_FILE, RunFileError, new_record, parse_cell, read_run_file
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
    MultiTurnScenario,
    Scenario,
    ScheduleScenario,
    SpeculativeScenario,
    TraceScenario,
)
from servers.launch import build_spec, running_server


@dataclass
class RunPaths:
    """Where a run's files go."""

    root: Path

    def cell(self, cell: Cell) -> Path:
        """The folder of one cell."""
        return self.root / "cells" / cell.cell_id


def read_run_matrix(run_dir: Path) -> Matrix:
    """The resolved matrix a run folder was started with (for ``--resume``); :class:`RunFileError` names a field
    of ``run.yaml`` that does not validate."""
    run = read_run_file(run_dir)
    if run is None:
        raise RunFileError(f"{run_dir / RUN_FILE} not found")
    return run.matrix


def write_run_yaml(run_dir: Path, matrix: Matrix, run_id: str,
                   hub_models: Mapping[str, Mapping[str, str]] | None = None,
                   models: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """The resolved config plus the environment; a run is reproducible from it.

    ``hub_models``: each hub model's repo, revision and snapshot commit (:func:`hub_provenance`).
    ``models``: each served model's lineage (:func:`model_lineage`), which the report's verdict column reads.
    """
    data: dict[str, Any] = {"run_id": run_id, "created_unix": time.time(), "matrix": matrix.model_dump(mode="json"),
                            "environment": environment.capture()}
    if hub_models:
        data["hub_models"] = {name: dict(found) for name, found in hub_models.items()}
    if models:
        data["models"] = {name: dict(found) for name, found in models.items()}
    (run_dir / RUN_FILE).write_text(yaml.safe_dump(data, sort_keys=False))


def hub_provenance(registry: Registry, models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Repo, revision and snapshot commit of each hub model among ``models`` (fetched now, so every cell serves
    that one snapshot); a model that cannot be fetched is recorded with the error, and its cells fail alone."""
    found: dict[str, dict[str, str]] = {}
    for name in dict.fromkeys(models):
        try:
            provenance = registry.provenance(name)
        except Exception as exc:  # the cell records the same error when it starts; the run goes on
            found[name] = {"error": str(exc)}
            continue
        if provenance is not None:
            found[name] = provenance
    return found


def model_lineage(registry: Registry, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each of ``models`` and every entry it was derived from: format, ``derived_from``, recipe and the size of
    its weight files (None where unknown, e.g. a checkpoint not prepared here). The report pairs each quantized
    entry with its source from this, as the registry stood when the run began."""
    found: dict[str, dict[str, Any]] = {}
    todo = list(dict.fromkeys(models))
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        try:
            entry = registry.get(name)
        except RegistryError:  # a transient hub model the cell itself reports on
            continue
        found[name] = {"format": entry.format, "derived_from": entry.derived_from, "recipe": entry.recipe,
                       "weight_bytes": model_bytes_of(name, registry.source)}
        if entry.derived_from:
            todo.append(entry.derived_from)
    return found


def note_resume(run_dir: Path, matrix: Matrix, only: Sequence[str], retried: Sequence[str],
                models: Mapping[str, Mapping[str, Any]] | None = None,
                unskipped: Sequence[str] = ()) -> dict[str, Any]:
    """Append a ``resumes`` entry to ``run.yaml`` (when, ``--only`` patterns, failed cells run again, skipped
    cells looked at again: ``unskipped``), keeping
    the creation data as it was; a matrix that differs from the one the run started with is recorded in the
    entry, and so is the lineage of the models it serves (``models``, :func:`model_lineage`). Returns the
    entry."""
    path = run_dir / RUN_FILE
    if not path.exists():  # a folder begun without run.yaml (by hand): start one, so the resume is on record
        write_run_yaml(run_dir, matrix, run_dir.name)
    data = yaml.safe_load(path.read_text()) or {}
    # The environment too: the cells this resume runs may run on other versions than the first ones.
    entry: dict[str, Any] = {"resumed_unix": time.time(), "only": list(only), "retried_failed": list(retried),
                             "environment": environment.capture()}
    if unskipped:
        entry["unskipped"] = list(unskipped)
    resolved = matrix.model_dump(mode="json")
    if resolved != data.get("matrix"):
        entry["matrix"] = resolved
    if models:
        entry["models"] = {name: dict(found) for name, found in models.items()}
    data["resumes"] = [*(data.get("resumes") or []), entry]
    tmp = run_dir / "run.yaml.tmp"
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return entry


def read_cell(path: Path) -> dict[str, Any] | None:
    """A cell's validated record, or None if it never finished; a record that does not validate raises
    :class:`~bench.run.results.CellRecordError` naming the field (``--resume`` never trusts it blindly)."""
    try:
        data = json.loads((path / CELL_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("status") not in FINAL:
        return None
    return parse_cell(data, path / CELL_FILE).as_dict()


def _write_cell(path: Path, cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    record = new_record(
        cell_id=cell.cell_id, model=cell.model, backend=cell.backend, option_set=cell.option_set.name,
        base_option_set=cell.base_option_set, options=cell.option_set.options.model_dump(mode="json"),
        seed=cell.seed, scenario_names=list(cell.scenarios), status=status, **extra).as_dict()
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f"{CELL_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path / CELL_FILE)
    return record


def _run_scenario(scenario: Scenario, run: CellRun, cell: Cell) -> dict[str, Any]:
    if isinstance(scenario, LoadScenario):
        return run_load_scenario(scenario, run)
    if isinstance(scenario, KVCacheScenario):
        return run_kv_scenario(scenario, run)
    if isinstance(scenario, SpeculativeScenario):
        return run_speculative_scenario(scenario, run, cell.option_set.options.speculative)
    if isinstance(scenario, MultiTurnScenario):
        from bench.run.multi_turn_scenario import run_multi_turn_scenario

        return run_multi_turn_scenario(scenario, run)
    if isinstance(scenario, TraceScenario | ScheduleScenario):
        from bench.run.timeline_scenario import run_timeline_scenario

        return run_timeline_scenario(scenario, run)
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
        kv = run.kv.as_dict()  # at start-up, while the server is surely up; kv-cache scenarios reuse it
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
                "model_format": spec.model_format, "rss_peak_gib": memory.overall_peak / GIB, "kv": kv}


def kept_on_resume(record: dict[str, Any] | None, retry_failed: bool, cell: Cell) -> bool:
    """Whether ``--resume`` keeps a cell's record as it is: ``ok`` always, ``failed`` only when not retrying
    failed cells, ``skipped`` only while the cell is skipped now for the same reason (a matrix filled over
    several runs gains models and engines: a cell skipped because its checkpoint did not exist yet runs once
    it does); a cell that never finished always runs."""
    if record is None:
        return False
    if record["status"] == "skipped":
        return record.get("reason") == cell.skip_reason
    return record["status"] != "failed" or not retry_failed


def recorded(cells: Sequence[Cell], run_dir: Path) -> dict[str, dict[str, Any] | None]:
    """Each cell's finished record in ``run_dir``, or None."""
    paths = RunPaths(run_dir)
    return {cell.cell_id: read_cell(paths.cell(cell)) for cell in cells}


def resume_plan(cells: Sequence[Cell], earlier: Mapping[str, dict[str, Any] | None],
                retry_failed: bool) -> dict[str, dict[str, Any] | None]:
    """Each cell's ``earlier`` record (:func:`recorded`) when ``--resume`` keeps it as it is, else None (it runs,
    or is recorded as skipped with today's reason)."""
    return {cell.cell_id: earlier[cell.cell_id] if kept_on_resume(earlier[cell.cell_id], retry_failed, cell)
            else None for cell in cells}


def run_matrix(matrix: Matrix, registry: Registry, run_dir: Path, console: Console, resume: bool = False,
               only: Sequence[str] = (), retry_failed: bool = True) -> list[dict[str, Any]]:
    """Run every cell (those matching ``only``, when given); returns their records in matrix order.

    With ``resume``, a cell already recorded in ``run_dir`` is kept (see :func:`kept_on_resume`), a failed one
    runs again (its earlier errors go into the new record as ``previous_errors``) unless ``retry_failed`` is
    false, and the resume is noted in ``run.yaml``.
    """
    paths = RunPaths(run_dir)
    cells = select(expand(matrix, registry), only)
    earlier = recorded(cells, run_dir) if resume else dict.fromkeys((cell.cell_id for cell in cells), None)
    kept = resume_plan(cells, earlier, retry_failed)
    if resume:
        redo = [cell for cell in cells if earlier[cell.cell_id] is not None and kept[cell.cell_id] is None]
        note_resume(run_dir, matrix, only,
                    [c.cell_id for c in redo if (earlier[c.cell_id] or {}).get("status") == "failed"],
                    model_lineage(registry, [cell.model for cell in cells]),
                    [c.cell_id for c in redo if (earlier[c.cell_id] or {}).get("status") == "skipped"])
    records: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("matrix", total=len(cells))
        for cell in cells:
            held = kept[cell.cell_id]
            if held is not None:
                records.append(held)
            else:
                progress.update(task, description=f"{cell.backend} · {cell.model} · {cell.option_set.name}")
                records.append(_execute(matrix, registry, cell, paths.cell(cell), progress, earlier[cell.cell_id]))
            progress.advance(task)
    return records


def _previous_errors(before: dict[str, Any] | None) -> dict[str, Any]:
    """The ``previous_errors`` of a cell run again after failing: its earlier ones plus the last."""
    if before is None or before.get("status") != "failed":
        return {}
    return {"previous_errors": [*before.get("previous_errors", []), before.get("error", "")]}


def _execute(matrix: Matrix, registry: Registry, cell: Cell, cell_dir: Path, progress: Progress,
             before: dict[str, Any] | None = None) -> dict[str, Any]:
    history = _previous_errors(before)
    if history:
        last = (history["previous_errors"][-1] or "failed").splitlines()[0]
        progress.console.print(f"[cyan]retry[/cyan] {cell.cell_id} (attempt {len(history['previous_errors']) + 1}; "
                               f"it failed before: {last})", soft_wrap=True)
    if cell.skip_reason is not None:
        progress.console.print(f"[yellow]skip[/yellow] {cell.cell_id}: {cell.skip_reason}")
        return _write_cell(cell_dir, cell, "skipped", reason=cell.skip_reason, **history)
    try:
        result = _run_cell(matrix, registry, cell, cell_dir, progress)
    except Exception as exc:  # a failed cell is data; the matrix goes on
        progress.console.print(f"[red]failed[/red] {cell.cell_id}: {(str(exc) or type(exc).__name__).splitlines()[0]}")
        return _write_cell(cell_dir, cell, "failed", error=f"{type(exc).__name__}: {exc}", **history)
    failed = [f"{name}: {s['error']}" for name, s in result["scenarios"].items() if s.get("status") == "failed"]
    if failed:  # the scenarios that worked stay in the record and in the report
        return _write_cell(cell_dir, cell, "failed", error="; ".join(failed), **history, **result)
    return _write_cell(cell_dir, cell, "ok", **history, **result)
