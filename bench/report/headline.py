"""The report's headline (issue #15): the best format per engine at the SLO, and each format's quality cost.

A *format* is a model served under an option set (``smollm2-135m-instruct-q8_0`` / ``gpu``, or the bf16
checkpoint under ``gpu-fp8``, which vLLM quantizes to FP8 as it loads). For each engine, and each GPU model its
cells ran on, the headline ranks the formats by output tokens/s at the SLO and shows the best one's load,
latency, memory and cost, with its quality against the matrix's ``quality_reference``
(:func:`bench.report.verdict.reference_rows`); every other format gets a line.

Every number is one the other tables show: the load point is :func:`bench.report.tables.scaling_rows`' best load
meeting the SLO (the scaling table's, and the seed table's "max out tok/s at SLO"), the memory
:func:`bench.report.tables.peak_memory_gib`, the cost :func:`bench.report.tables.cost_per_million`. Several
seeds of a format are averaged, as in the seed table. Formats on different GPU models are never ranked
together: the card is NVML's name in the load point's ``gpu.jsonl``, else ``run.yaml``'s environment.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report.tables import (
    CellKey,
    LoadRow,
    RunData,
    cost_per_million,
    loads_by_cell,
    peak_memory_gib,
    scaling_rows,
)
from bench.report.verdict import VerdictRow, is_reference, reference_rows, relative_text, run_references
from bench.run.results import Environment
from bench.run.schema import EvalScenario, LoadScenario, QualityTarget
from bench.scrape import read_gpu_rows

HEADLINE_HEADER = ("run", "backend", "card", "best format (model / options)", "out tok/s at SLO", "at load",
                   "TTFT p50 ms", "TPOT p50 ms", "peak mem GiB", "$/1M out tok",
                   "quality vs reference (relative change, 95% CI, verdict)")
REFERENCE = "reference"
TOP = " (top of the sweep)"


@dataclass(frozen=True)
class CellAtSlo:
    """One cell's best load point meeting the SLO (None figures: no point met it)."""

    key: CellKey
    card: str
    point: str | None
    tok_s: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    memory_gib: float | None
    cost: float | None


@dataclass(frozen=True)
class FormatAtSlo:
    """A format on one engine and card: its cells (one per seed) and its quality rows against the reference."""

    cells: tuple[CellAtSlo, ...]
    quality: tuple[VerdictRow, ...]
    reference: bool

    @property
    def key(self) -> CellKey:
        """The first seed's cell (run, backend, model, options)."""
        return self.cells[0].key

    def mean(self, figure: str) -> float | None:
        """A figure's mean over the seeds that have it."""
        values = [v for c in self.cells if (v := getattr(c, figure)) is not None]
        return statistics.fmean(values) if values else None

    @property
    def points(self) -> str:
        """The load point(s) of the seeds, ``load/8``."""
        found = sorted({c.point for c in self.cells if c.point})
        return ", ".join(found) if found else "none met the SLO"


def slo_text(run: RunData) -> str | None:
    """The run's SLOs as ``load: TTFT ≤ 500 ms, TPOT ≤ 25 ms``, or None when no load scenario sets one."""
    matrix = run.matrix
    parts = []
    for scenario in matrix.scenarios if matrix else ():
        if isinstance(scenario, LoadScenario) and scenario.slo.is_set():
            slo = scenario.slo
            limits = [f"{name} ≤ {value:g} ms" for name, value in
                      (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms)) if value is not None]
            parts.append(f"{scenario.name}: {', '.join(limits)}")
    return "; ".join(parts) or None


def speed_only(run: RunData) -> bool:
    """Whether the run's matrix has no eval scenario (a speed table, such as a random-weight model's)."""
    return run.matrix is not None and not any(isinstance(s, EvalScenario) for s in run.matrix.scenarios)


def formats_at_slo(run: RunData, gpu_hour_usd: float | None,
                   references: Sequence[str] | None = None) -> list[FormatAtSlo]:
    """Every format of a run with load points, with its quality against the run's references (``references``
    overrides the matrix's); none for a run without an SLO, or with evals but no reference to judge them by (its
    formats are judged by the derived_from verdict instead). A speed-only run has formats without quality."""
    found = run_references(run.meta, references)
    if slo_text(run) is None or not (found or speed_only(run)):
        return []
    target = run.matrix.quality_target if run.matrix else QualityTarget()
    quality: dict[tuple[str, str, str], list[VerdictRow]] = defaultdict(list)
    for row in reference_rows(run.run_dir, run.run_id, run.meta, target, found) if found else ():
        quality[(row.quant.backend, row.quant.model, row.quant.options)].append(row)
    groups: dict[tuple[str, str, str, str], list[CellAtSlo]] = defaultdict(list)
    for cell in cells_at_slo(run, gpu_hour_usd):
        groups[(cell.key.backend, cell.card, cell.key.model, cell.key.options)].append(cell)
    out = []
    for (backend, _card, model, options), cells in groups.items():
        reference = is_reference(model, run.cell_options.get(cells[0].key), found)
        out.append(FormatAtSlo(tuple(cells), tuple(quality.get((backend, model, options), [])), reference))
    return out


def cells_at_slo(run: RunData, gpu_hour_usd: float | None) -> list[CellAtSlo]:
    """Per cell with load points: the scaling table's best load meeting the SLO and the seed table's figures."""
    by_cell = loads_by_cell(run)
    out = []
    for s in scaling_rows(run):
        rows, best = by_cell[s.key], s.best
        card = card_of(run, [best.records] if best and best.records else [r.records for r in rows if r.records])
        point = f"{best.scenario}/{best.point}{TOP if top_of_sweep(best, rows) else ''}" if best else None
        out.append(CellAtSlo(
            s.key, card, point, best.throughput if best else None,
            best.stat("ttft_ms", "p50") if best else None, best.stat("tpot_ms", "p50") if best else None,
            peak_memory_gib(run, s.key, rows),
            cost_per_million(best.throughput if best else None, gpu_hour_usd, s.devices)))
    return out


def top_of_sweep(best: LoadRow, rows: Sequence[LoadRow]) -> bool:
    """Whether every load point of ``best``'s scenario met the SLO: the sweep never found the engine's limit,
    so the best figure is a lower bound of what it sustains within the SLO (a sweep capped by its
    ``max_value`` or by the server's batch size)."""
    same = [r for r in rows if r.scenario == best.scenario]
    return len(same) > 1 and all(r.meets_slo() for r in same)


def card_of(run: RunData, records: Sequence[Path]) -> str:
    """The GPU model(s) NVML named in the first load point's ``gpu.jsonl`` that has any, else the GPUs of the
    run's environments (run.yaml: its creation and each resume), else the CPU."""
    for path in records:
        names = sorted({row.name for row in read_gpu_rows(path.parent / "gpu.jsonl")})
        if names:
            return " + ".join(names)
    envs = [e for e in ([run.meta.environment] + [r.environment for r in run.meta.resumes] if run.meta else [])
            if e is not None]
    names = sorted({g.name for e in envs for g in e.gpus})
    if len(names) == 1:
        return names[0]
    if names:
        return f"one of {', '.join(names)} (run.yaml)"
    cpu = (envs[0] if envs else Environment()).cpu
    return f"CPU {cpu}" if cpu else "not recorded"


def ranked(formats: list[FormatAtSlo]) -> dict[tuple[str, str, str], list[FormatAtSlo]]:
    """Formats per (run, backend, card), the most output tokens/s at the SLO first (none met it: last)."""
    groups: dict[tuple[str, str, str], list[FormatAtSlo]] = defaultdict(list)
    for f in formats:
        groups[(f.key.run, f.key.backend, f.cells[0].card)].append(f)
    return {key: sorted(group, key=lambda f: (-(f.mean("tok_s") or -1.0), f.key.model, f.key.options))
            for key, group in sorted(groups.items())}


def quality_text(f: FormatAtSlo) -> str:
    """Per task: the relative change against the reference, its 95% interval and the verdict."""
    if f.reference:
        return REFERENCE
    if not f.quality:
        return "no eval"
    seeds = len({r.quant.seed for r in f.quality}) > 1
    parts = []
    for r in sorted(f.quality, key=lambda r: (r.quant.task, r.quant.scenario, r.quant.seed)):
        where = f" vs {r.source.backend}" if r.source is not None and r.matched == "other engine" else ""
        seed = f"s{r.quant.seed} " if seeds else ""
        parts.append(f"{seed}{r.quant.scenario} {relative_text(r.change)}{where}: {r.verdict}")
    return "; ".join(parts)
