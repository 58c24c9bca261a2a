"""``bench run [MATRIX.yaml]`` and ``bench report RUN_DIR...``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from backends.paths import reports_dir

if TYPE_CHECKING:
    from bench.run.cells import Cell


def _new_run_id(name: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{name}"


def run(
    matrix_file: Path = typer.Argument(None, help="Matrix YAML; default: the built-in matrix on the default model."),
    out: Path = typer.Option(None, help="Parent folder of run folders (default: ./reports)."),
    run_id: str = typer.Option(None, help="Run folder name (default: timestamp + matrix name)."),
    resume: Path = typer.Option(None, help="Continue this run folder: keep its ok cells and the cells still "
                                "skipped for the same reason, run the rest (failed cells included, unless "
                                "--keep-failed). With --dry-run: list what it would keep and run."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--keep-failed", help="With --resume: run the cells "
                                      "recorded as failed again (default), or keep their records."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and exit."),
    seeds: int = typer.Option(None, help="Repeat each cell with seeds 0..N-1."),
    gpu_hour_usd: float = typer.Option(None, help="Price for cost per 1M output tokens."),
    registry: Path = typer.Option(None, help="models.yaml to use."),
    only: list[str] = typer.Option(None, "--only", help="Run just the cells whose id matches this glob "
                                   "(repeatable); --resume the run folder later for the rest."),
) -> None:
    """Run models × backends × options × scenarios and write reports/<run-id>/."""
    from backends.checkpoints import RegistryError, load_registry
    from bench.report.render import write_report
    from bench.run.cells import default_matrix, expand, select
    from bench.run.executor import (
        hub_provenance,
        model_lineage,
        read_run_matrix,
        recorded,
        resume_plan,
        run_matrix,
        write_run_yaml,
    )
    from bench.run.results import CellRecordError
    from bench.run.schema import MatrixError, load_matrix

    console = Console()
    try:
        reg = load_registry(registry)
        if matrix_file:
            matrix = load_matrix(matrix_file)
        elif resume is not None:  # the matrix the stopped run was started with
            matrix = read_run_matrix(resume)
        else:
            matrix = default_matrix(reg)
        reg = reg.with_models(matrix.models)  # an ORG/NAME the registry lacks is a transient hub entry
    except (RegistryError, MatrixError, ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    updates: dict[str, object] = {}
    if seeds:
        updates["seeds"] = tuple(range(seeds))
    if gpu_hour_usd is not None:
        updates["gpu_hour_usd"] = gpu_hour_usd
    matrix = matrix.model_copy(update=updates)
    try:
        cells = select(expand(matrix, reg), only or ())
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if dry_run:
        _print_cells(console, cells,
                     resume_plan(cells, recorded(cells, resume), retry_failed) if resume is not None else {})
        return
    if resume is not None:
        run_dir = resume
    else:
        run_dir = (out or reports_dir()) / (run_id or _new_run_id(matrix.name))
        run_dir.mkdir(parents=True, exist_ok=False)
        write_run_yaml(run_dir, matrix, run_dir.name, hub_provenance(reg, matrix.models),
                       model_lineage(reg, [*matrix.models, *(c.model for c in expand(matrix, reg))]))
    console.print(f"run folder: {run_dir}")
    try:
        records = run_matrix(matrix, reg, run_dir, console, resume=resume is not None, only=only or (),
                             retry_failed=retry_failed)
    except CellRecordError as exc:  # --resume over a cell.json this version cannot read
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    paths = write_report([run_dir], run_dir, matrix.gpu_hour_usd, matrix.headline())
    ok = sum(r["status"] == "ok" for r in records)
    console.print(f"{ok}/{len(records)} cells ok; report: {paths[0]}")
    if ok == 0:
        raise typer.Exit(1)


def _print_cells(console: Console, cells: list[Cell], kept: Mapping[str, Mapping[str, Any] | None]) -> None:
    """One line per cell: what runs on it, or why it is skipped, or (``--resume``) that its record is kept
    (plain lines stay readable when narrow)."""
    for cell in cells:
        record = kept.get(cell.cell_id)
        if record is not None:
            console.print(f"[cyan]keep[/cyan] {cell.cell_id}  (recorded {record['status']})", soft_wrap=True)
        elif cell.skip_reason is None:
            console.print(f"[green]run [/green] {cell.cell_id}  scenarios: {', '.join(cell.scenarios)}", soft_wrap=True)
        else:
            console.print(f"[yellow]skip[/yellow] {cell.cell_id}  ({', '.join(cell.scenarios)}): {cell.skip_reason}",
                          soft_wrap=True)
    held = sum(kept.get(c.cell_id) is not None for c in cells)
    runnable = sum(c.skip_reason is None and kept.get(c.cell_id) is None for c in cells)
    console.print(f"{len(cells)} cells: {runnable} to run, {len(cells) - runnable - held} skipped"
                  + (f", {held} kept from the run folder" if kept else ""))


def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run folders (compared side by side)."),
    out: Path = typer.Option(None, help="Where to write (default: the first run folder)."),
    gpu_hour_usd: float = typer.Option(None, help="Price for cost per 1M output tokens."),
    headline: str = typer.Option(None, help="Load point the seed table quotes, 'scenario/point' (e.g. load/c8)."),
    quality_reference: list[str] = typer.Option(
        None, help="A bf16 model every other format's quality is compared with (repeat for the next in order of "
        "preference); default: each run's matrix quality_reference."),
) -> None:
    """Write report.md, report.html and plots from run folders."""
    from bench.report.render import write_report
    from bench.run.results import CellRecordError, RunFileError

    missing = [d for d in run_dirs if not (d / "cells").is_dir()]
    if missing:
        Console().print(f"[red]error:[/red] not a run folder (no cells/): {', '.join(map(str, missing))}")
        raise typer.Exit(2)
    try:
        paths = write_report(run_dirs, out or run_dirs[0], gpu_hour_usd, headline, quality_reference or None)
    except (CellRecordError, RunFileError) as exc:
        Console().print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    Console().print("\n".join(str(p) for p in paths))


def register(app: typer.Typer) -> None:
    """Add ``bench run`` and ``bench report``."""
    app.command("run")(run)
    app.command("report")(report)
