"""Rows for the report, read from a run folder's ``cells/*/cell.json`` (pure apart from reading files).

Each cell is validated into :class:`~bench.run.results.CellRecord` and read by attribute: a field renamed in
the results is a type error here (mypy) or a validation error naming it, never an empty "–" in a report.
The seed table aggregates one row per (run, backend, model, option set) over seeds: mean ± std.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backends.base import EngineOptions
from bench.evals.config import EvalSummary
from bench.metrics import GOODPUT_TARGET, LoadSummary
from bench.run.results import (
    CELL_FILE,
    CellRecord,
    EvalResult,
    KVCacheResult,
    KVCapacity,
    KVFit,
    LoadPoint,
    LoadResult,
    MultiTurnResult,
    RunFile,
    ScenarioResult,
    ScheduleResult,
    SkippedScenario,
    SpeculativeResult,
    TraceResult,
    UnderLoadResult,
    read_cell_file,
    read_run_file,
)
from bench.run.schema import Matrix

# The latency distributions of a load summary, and the statistics each holds (:class:`bench.metrics.Stats`).
StatMetric = Literal["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "e2e_sched_ms", "queue_ms"]
StatKey = Literal["n", "mean", "p50", "p90", "p95", "p99", "min", "max"]

# Quality columns of the seed table: task -> column heading (the task's primary metric is shown).
QUALITY_COLUMNS: dict[str, str] = {"math-absdiff": "math AbsDiff p50 ↓", "arc-challenge": "ARC-C acc",
                                   "arc-easy": "ARC-E acc", "squad": "SQuAD F1", "humaneval": "HumanEval pass@1"}


@dataclass(frozen=True)
class CellKey:
    """Which server configuration a row belongs to."""

    run: str
    cell: str
    backend: str
    model: str
    options: str
    seed: int

    @property
    def group(self) -> tuple[str, str, str, str]:
        """The same configuration across seeds."""
        return (self.run, self.backend, self.model, self.options)

    @property
    def label(self) -> str:
        """Legend text."""
        return f"{self.backend} · {self.model} · {self.options}"


@dataclass(frozen=True)
class LoadRow:
    """One load point of one cell (a fixed point or a sweep step)."""

    key: CellKey
    scenario: str
    point: str
    summary: LoadPoint
    startup_s: float | None
    records: Path | None = None

    def stat(self, metric: StatMetric, key: StatKey) -> float | None:
        """``summary.<metric>.<key>``, e.g. ``("ttft_ms", "p50")``."""
        return summary_stat(self.summary, metric, key)

    @property
    def throughput(self) -> float | None:
        """Output tokens/s."""
        return self.summary.output_throughput_tok_s

    def meets_slo(self) -> bool:
        """Passed the sweep, or enough requests met the SLO (every point passes when no SLO is set)."""
        if self.summary.passed is not None:
            return self.summary.passed
        return self.slo_met_itself()

    def slo_met_itself(self) -> bool:
        """Enough requests met the SLO at this point, whether or not a sweep counted it (a saturated step that
        met the SLO is not passed)."""
        if not self.summary.num_ok:
            return False
        frac = self.summary.goodput_fraction
        return frac is None or frac >= GOODPUT_TARGET


@dataclass(frozen=True)
class KVRow:
    """One context length of one kv-cache cell."""

    key: CellKey
    scenario: str
    kv: KVCapacity
    length: int
    summary: LoadPoint
    fit: KVFit
    kv_dtype: str
    prefix_caching: bool


@dataclass(frozen=True)
class PrefixRow:
    """The prefix-cache probe of one kv-cache cell: shared-prefix against unique prompts."""

    key: CellKey
    scenario: str
    prefix_caching: bool
    shared: LoadPoint
    unique: LoadPoint


@dataclass(frozen=True)
class SpecRow:
    """One concurrency of one speculative cell."""

    key: CellKey
    scenario: str
    method: str
    baseline: str  # the option set name of the same configuration without speculation
    concurrency: int
    summary: LoadPoint

    @property
    def comparison_key(self) -> tuple[str, str, str, str, int, int]:
        """Where a method is compared with no speculation: run, engine, model, baseline, seed, concurrency."""
        return (self.key.run, self.key.backend, self.key.model, self.baseline, self.key.seed, self.concurrency)


@dataclass(frozen=True)
class EvalRow:
    """One eval of one cell."""

    key: CellKey
    scenario: str
    result: EvalSummary
    under_load: UnderLoadResult | None = None

    @property
    def flagged(self) -> bool:
        """More than 20% of the samples had no extractable answer: the score is not the model's quality."""
        return self.result.no_answer_flag


@dataclass(frozen=True)
class CellStatus:
    """A cell (or, when ``scenario`` is set, one scenario in it) that did not produce results, and why."""

    run: str
    cell: str
    status: str
    reason: str
    scenario: str = ""


@dataclass(frozen=True)
class TimelineRow:
    """A trace replay or a rate schedule of one cell: its run and its time series."""

    key: CellKey
    scenario: str
    result: TraceResult | ScheduleResult


@dataclass(frozen=True)
class SessionRow:
    """One point of a multi-turn scenario: its concurrent sessions and its summary (TTFT by turn inside)."""

    key: CellKey
    scenario: str
    point: str
    summary: LoadPoint
    prefix_caching: bool


@dataclass
class RunData:
    """Everything the report shows for one run."""

    run_dir: Path
    run_id: str
    meta: RunFile | None  # run.yaml; None: a folder without one
    loads: list[LoadRow] = field(default_factory=list)
    kv: list[KVRow] = field(default_factory=list)
    prefix: list[PrefixRow] = field(default_factory=list)
    spec: list[SpecRow] = field(default_factory=list)
    evals: list[EvalRow] = field(default_factory=list)
    timelines: list[TimelineRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    problems: list[CellStatus] = field(default_factory=list)
    cell_memory: dict[CellKey, float] = field(default_factory=dict)
    cell_devices: dict[CellKey, int] = field(default_factory=dict)
    cell_kv: dict[CellKey, KVCapacity] = field(default_factory=dict)
    cell_options: dict[CellKey, EngineOptions] = field(default_factory=dict)

    def devices(self, key: CellKey) -> int:
        """Accelerators (or engine workers on CPU) the cell's server occupies."""
        return self.cell_devices.get(key, 1)

    @property
    def matrix(self) -> Matrix | None:
        """The run's resolved matrix (from run.yaml), or None."""
        return self.meta.matrix if self.meta else None


def _cells(run_dir: Path) -> Iterator[tuple[Path, CellRecord]]:
    """Each cell's record, validated (:class:`~bench.run.results.CellRecordError` names a missing field)."""
    for path in sorted((run_dir / "cells").glob(f"*/{CELL_FILE}")):
        yield path.parent, read_cell_file(path)


def load_run(run_dir: Path) -> RunData:
    """Read a run folder; a cell record that does not validate raises
    :class:`~bench.run.results.CellRecordError`, a ``run.yaml`` :class:`~bench.run.results.RunFileError`."""
    meta = read_run_file(run_dir)
    data = RunData(run_dir, (meta.run_id if meta else None) or run_dir.name, meta)
    for cell_dir, cell in _cells(run_dir):
        _add_cell(data, cell_dir, cell)
    return data


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def _add_cell(data: RunData, cell_dir: Path, cell: CellRecord) -> None:
    key = CellKey(data.run_id, cell.cell_id, cell.backend, cell.model, cell.option_set, cell.seed)
    if cell.status != "ok":
        data.problems.append(CellStatus(data.run_id, cell.cell_id, cell.status,
                                        _first_line(cell.reason or cell.error or "")))
    if cell.rss_peak_gib is not None:
        data.cell_memory[key] = cell.rss_peak_gib
    data.cell_devices[key] = devices(cell.options)
    data.cell_options[key] = cell.options
    if cell.kv is not None:
        data.cell_kv[key] = cell.kv
    for name, scenario in cell.scenarios.items():
        _add_scenario(data, key, cell_dir, cell, name, scenario)


def _add_scenario(data: RunData, key: CellKey, cell_dir: Path, cell: CellRecord, name: str,
                  scenario: ScenarioResult) -> None:
    """A scenario's rows; a skipped one is a problem row (e.g. a loglikelihood eval on an engine without prompt
    logprobs), a failed one is named in the cell's error."""
    if isinstance(scenario, SkippedScenario):
        data.problems.append(CellStatus(data.run_id, cell.cell_id, "skipped", _first_line(scenario.reason), name))
    elif isinstance(scenario, LoadResult):
        for point, summary in scenario.points.items():
            data.loads.append(LoadRow(key, name, point, summary, cell.startup_s, cell_dir / summary.dir
                                      / "requests.jsonl"))
    elif isinstance(scenario, KVCacheResult):
        _add_kv(data, key, cell, name, scenario)
    elif isinstance(scenario, SpeculativeResult):
        baseline = cell.base_option_set or cell.option_set
        data.spec.extend(SpecRow(key, name, scenario.method, baseline, summary.concurrency or 0, summary)
                         for summary in scenario.points.values())
    elif isinstance(scenario, EvalResult):
        data.evals.append(EvalRow(key, name, scenario.result, scenario.under_load))
    elif isinstance(scenario, TraceResult | ScheduleResult):
        data.timelines.append(TimelineRow(key, name, scenario))
    elif isinstance(scenario, MultiTurnResult):
        prefix = cell.options.prefix_caching
        data.sessions.extend(SessionRow(key, name, point, summary, prefix)
                             for point, summary in scenario.points.items())


def _add_kv(data: RunData, key: CellKey, cell: CellRecord, name: str, scenario: KVCacheResult) -> None:
    dtype = cell.options.kv_cache_dtype
    prefix = cell.options.prefix_caching
    for length, summary in scenario.lengths.items():
        data.kv.append(KVRow(key, name, scenario.kv, int(length), summary,
                             summary.max_concurrency_fit or KVFit(), dtype, prefix))
    if scenario.prefix is not None:
        data.prefix.append(PrefixRow(key, name, prefix, scenario.prefix.shared, scenario.prefix.unique))


def devices(options: EngineOptions) -> int:
    """Accelerators a configuration occupies: tensor × pipeline × data parallel size."""
    return options.tensor_parallel_size * options.pipeline_parallel_size * options.data_parallel_size


def cost_per_million(output_tok_s: float | None, gpu_hour_usd: float | None, gpus: int = 1) -> float | None:
    """USD per 1M output tokens at a throughput, for ``gpus`` accelerators at an hourly price each."""
    if not output_tok_s or gpu_hour_usd is None:
        return None
    return gpu_hour_usd * gpus / 3600.0 / output_tok_s * 1e6


@dataclass(frozen=True)
class ScalingRow:
    """A configuration's best load point that met the SLO, in total and per device."""

    key: CellKey
    devices: int
    best: LoadRow | None  # None: no point met the SLO
    kv: KVCapacity

    @property
    def per_device(self) -> float | None:
        """Output tokens/s per device at the SLO."""
        tok_s = self.best.throughput if self.best else None
        return tok_s / self.devices if tok_s else None


def loads_by_cell(run: RunData) -> dict[CellKey, list[LoadRow]]:
    """The run's load points grouped by cell."""
    by_cell: dict[CellKey, list[LoadRow]] = defaultdict(list)
    for row in run.loads:
        by_cell[row.key].append(row)
    return by_cell


def best_at_slo(rows: list[LoadRow]) -> LoadRow | None:
    """The load point with the most output tokens/s among those that met the SLO, or None."""
    passing = [r for r in rows if r.meets_slo() and r.throughput]
    return max(passing, key=lambda r: r.throughput or 0.0) if passing else None


def scaling_rows(run: RunData) -> list[ScalingRow]:
    """Per cell: the highest-throughput load point that met the SLO, with the devices it took."""
    out = [ScalingRow(key, run.devices(key), best_at_slo(rows), run.cell_kv.get(key, KVCapacity()))
           for key, rows in loads_by_cell(run).items()]
    return sorted(out, key=lambda r: (r.key.backend, r.key.model, r.devices, r.key.options, r.key.seed))


# ---- speculative speed-up ----------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedUp:
    """A speculative method against the same engine and options without speculation, at one concurrency."""

    run: str
    backend: str
    model: str
    baseline: str
    method: str
    concurrency: int
    speedup: float | None  # output tokens/s with the method / without
    tpot_ratio: float | None  # TPOT p50 without / with (above 1: faster per token)
    acceptance_rate: float | None
    acceptance_length: float | None
    seed: int


def speedups(rows: list[SpecRow]) -> list[SpeedUp]:
    """Speed-up of each speculative row over the ``none`` row of the same baseline, seed and concurrency."""
    base = {r.comparison_key: r for r in rows if r.method == "none"}
    out = []
    for r in rows:
        ref = base.get(r.comparison_key)
        if r.method == "none" or ref is None:
            continue
        server = r.summary.server
        out.append(SpeedUp(r.key.run, r.key.backend, r.key.model, r.baseline, r.method, r.concurrency,
                           _ratio(r.summary.output_throughput_tok_s, ref.summary.output_throughput_tok_s),
                           _ratio(summary_stat(ref.summary, "tpot_ms", "p50"),
                                  summary_stat(r.summary, "tpot_ms", "p50")),
                           server.spec_acceptance_rate, server.spec_acceptance_length, r.key.seed))
    return sorted(out, key=lambda s: (s.run, s.backend, s.model, s.method, s.seed, s.concurrency))


def stops_paying(points: list[SpeedUp]) -> int | None:
    """The lowest concurrency at which the method's speed-up drops below 1 (None: it pays everywhere)."""
    for s in sorted(points, key=lambda s: s.concurrency):
        if s.speedup is not None and s.speedup < 1.0:
            return s.concurrency
    return None


def summary_stat(summary: LoadSummary, metric: StatMetric, key: StatKey) -> float | None:
    """``summary.<metric>.<key>`` (e.g. TTFT's p50) as a float, or None where the distribution had no value."""
    value = getattr(getattr(summary, metric), key)
    return None if value is None else float(value)


def _ratio(num: float | None, den: float | None) -> float | None:
    return float(num) / float(den) if num is not None and den else None


# ---- the seed table ----------------------------------------------------------------------------


@dataclass
class SeedStats:
    """Per-seed values of one configuration (each list has one entry per seed that produced it)."""

    quality: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    flagged: set[str] = field(default_factory=set)  # tasks with a seed whose answers were mostly not extractable
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    max_tok_s: list[float] = field(default_factory=list)
    memory_gib: list[float] = field(default_factory=list)
    mbu: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    seeds: set[int] = field(default_factory=set)


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (None with one value)."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def headline_value(result: EvalSummary) -> float | None:
    """The task's headline score, ``value``; a GSM8K record written while its headline was the mean absolute
    difference (which run-on replies decide: 5e82, even inf) gives the median it holds beside it instead."""
    if result.task == "math-absdiff" and result.metric == "absdiff_mean":
        return result.metrics.get("absdiff_median", result.value)
    return result.value


def seed_table(run: RunData, headline: str | None, gpu_hour_usd: float | None) -> dict[tuple[str, ...], SeedStats]:
    """Per configuration of ``run``: the seed table's values for each seed."""
    table: dict[tuple[str, ...], SeedStats] = defaultdict(SeedStats)
    for e in run.evals:
        value = headline_value(e.result)
        if e.flagged:  # shown as flagged, never averaged in as if it were the model's score
            table[e.key.group].flagged.add(e.result.task)
            table[e.key.group].seeds.add(e.key.seed)
        elif value is not None:
            table[e.key.group].quality[e.result.task].append(float(value))
            table[e.key.group].seeds.add(e.key.seed)
    by_cell = loads_by_cell(run)
    for key, rows in by_cell.items():
        _add_load_stats(table[key.group], rows, headline, gpu_hour_usd, run.devices(key))
        table[key.group].seeds.add(key.seed)
    for key, gib in run.cell_memory.items():
        if key.group in table and gpu_peak_gib(by_cell[key]) is None:
            table[key.group].memory_gib.append(gib)
    return dict(table)


def _add_load_stats(stats: SeedStats, rows: list[LoadRow], headline: str | None, gpu_hour_usd: float | None,
                    gpus: int) -> None:
    best = best_at_slo(rows)
    # Latency at the headline load; without one (a sweep has no fixed points), at the best load meeting the SLO.
    head = [r for r in rows if f"{r.scenario}/{r.point}" == headline] if headline else [best] if best else []
    if head:
        if (v := head[0].stat("ttft_ms", "p50")) is not None:
            stats.ttft_ms.append(v)
        if (v := head[0].stat("tpot_ms", "p50")) is not None:
            stats.tpot_ms.append(v)
        if (mbu := head[0].summary.server.mbu) is not None:
            stats.mbu.append(float(mbu))
    if best is not None and best.throughput:
        stats.max_tok_s.append(best.throughput)
        if (cost := cost_per_million(best.throughput, gpu_hour_usd, gpus)) is not None:
            stats.cost.append(cost)
    if (gpu := gpu_peak_gib(rows)) is not None:
        stats.memory_gib.append(gpu)


def gpu_peak_gib(rows: list[LoadRow]) -> float | None:
    """The highest GPU memory (NVML) over a cell's load points, or None where none was sampled: the seed table's
    peak memory then falls back to the server's RSS."""
    gpu = [g for r in rows if (g := r.summary.server.gpu_mem_peak_gib)]
    return max(gpu) if gpu else None


def peak_memory_gib(run: RunData, key: CellKey, rows: list[LoadRow]) -> float | None:
    """A cell's peak memory as the seed table reads it: GPU memory where sampled, else the server's RSS."""
    gpu = gpu_peak_gib(rows)
    return gpu if gpu is not None else run.cell_memory.get(key)
