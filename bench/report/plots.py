"""PNG plots for the report (matplotlib, Agg backend, no display needed).

Each function takes report rows, writes one PNG into ``out`` and returns its path, or None when there
is nothing to plot. Series are labelled with the run id when several runs are compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from backends import archived
from bench.load.records import read_records
from bench.metrics import SLO, tpot, ttft
from bench.metrics.timeseries import WindowStats
from bench.report.tables import CellKey, EvalRow, KVRow, LoadRow, SpeedUp, StatMetric, TimelineRow, summary_stat
from bench.run.results import KVCapacity

NAN = float("nan")
LATENCIES: tuple[StatMetric, StatMetric] = ("ttft_ms", "tpot_ms")


def _label(key: CellKey, multi_run: bool) -> str:
    return f"{key.run} · {key.label}" if multi_run else key.label


def _save(fig: Any, out: Path, name: str) -> Path:
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(value: float | None) -> float:
    return NAN if value is None else value


def _opt_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def throughput_latency(rows: list[LoadRow], out: Path, multi_run: bool = False) -> Path | None:
    """Output tokens/s against median TTFT and TPOT, one line per cell and load scenario."""
    if not rows:
        return None
    grouped: dict[str, list[LoadRow]] = defaultdict(list)
    for row in rows:
        grouped[f"{_label(row.key, multi_run)} · s{row.key.seed} · {row.scenario}"].append(row)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, series in grouped.items():
        series = sorted(series, key=lambda r: r.throughput or 0.0)
        xs = [_num(r.throughput) for r in series]
        for ax, metric in zip(axes, LATENCIES, strict=True):
            ys = [_num(r.stat(metric, "p50")) for r in series]
            ax.plot(xs, ys, marker="o", label=label)
            for x, y, r in zip(xs, ys, series, strict=True):
                ax.annotate(r.point, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax, title in zip(axes, ("TTFT p50 (ms)", "TPOT p50 (ms)"), strict=True):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle("Throughput against latency")
    return _save(fig, out, "throughput_latency")


def latency_cdfs(rows: list[LoadRow], out: Path, multi_run: bool = False) -> Path | None:
    """Per-request TTFT and TPOT CDFs, recomputed from each point's ``requests.jsonl``."""
    series = []
    for row in rows:
        if row.records is None or not archived.exists(row.records):
            continue
        records = [r for r in read_records(row.records) if r.ok and not r.warmup]
        ttfts = [v * 1e3 for r in records if (v := ttft(r)) is not None]
        tpots = [v * 1e3 for r in records if (v := tpot(r)) is not None]
        if ttfts:
            series.append((f"{_label(row.key, multi_run)} · {row.scenario}/{row.point}", ttfts, tpots))
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, ttfts, tpots in series:
        for ax, values in zip(axes, (ttfts, tpots), strict=True):
            if values:
                xs = np.sort(values)
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label)
    for ax, title in zip(axes, ("TTFT (ms)", "TPOT (ms)"), strict=True):
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle("Latency CDFs (per request, from requests.jsonl)")
    return _save(fig, out, "latency_cdf")


def kv_context(rows: list[KVRow], out: Path, multi_run: bool = False) -> Path | None:
    """KV capacity per GiB (or in tokens) per configuration, and TTFT/TPOT against context length."""
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    capacity: dict[str, KVCapacity] = {}
    grouped: dict[str, list[KVRow]] = defaultdict(list)
    for row in rows:
        label = f"{_label(row.key, multi_run)} · s{row.key.seed}"
        capacity[_label(row.key, multi_run)] = row.kv
        grouped[label].append(row)
    _capacity_bars(axes[0], capacity)
    for label, series in grouped.items():
        series = sorted(series, key=lambda r: r.length)
        xs = [r.length for r in series]
        for ax, metric in zip(axes[1:], LATENCIES, strict=True):
            ax.plot(xs, [_num(summary_stat(r.summary, metric, "p50")) for r in series], marker="o", label=label)
    for ax, title in zip(axes[1:], ("TTFT p50 (ms)", "TPOT p50 (ms)"), strict=True):
        ax.set_xlabel("context length (prompt tokens)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle("KV cache: capacity, and latency against context length")
    return _save(fig, out, "kv_context")


def _capacity_bars(ax: Any, capacity: dict[str, KVCapacity]) -> None:
    per_gib: dict[str, float | None] = {k: v.tokens_per_gib for k, v in capacity.items()}
    use_gib = any(per_gib.values())
    values = per_gib if use_gib else {k: _opt_float(v.capacity_tokens) for k, v in capacity.items()}
    names = list(values)
    ax.barh(range(len(names)), [_num(values[n]) for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), [n.replace(" · ", "\n", 1) for n in names], fontsize=6)
    ax.set_xlabel("KV tokens per GiB" if use_gib else "KV capacity (tokens)")
    for i, n in enumerate(names):
        tokens = capacity[n].capacity_tokens
        if tokens:
            ax.annotate(f"{tokens:,} tok", (_num(values[n]), i), fontsize=6, xytext=(3, -2),
                        textcoords="offset points")
    ax.grid(alpha=0.3, axis="x")


def spec_speedup(points: list[SpeedUp], out: Path, multi_run: bool = False) -> Path | None:
    """Speculative speed-up (output tokens/s against no speculation) over concurrency."""
    if not points:
        return None
    grouped: dict[str, list[SpeedUp]] = defaultdict(list)
    for p in points:
        run = f"{p.run} · " if multi_run else ""
        grouped[f"{run}{p.backend} · {p.model} · {p.method} · s{p.seed}"].append(p)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, series in grouped.items():
        series = sorted(series, key=lambda p: p.concurrency)
        rates = [p.acceptance_rate for p in series if p.acceptance_rate is not None]
        accept = f" (accept {np.mean(rates):.0%})" if rates else ""
        ax.plot([p.concurrency for p in series], [_num(p.speedup) for p in series], marker="o",
                label=label + accept)
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("speed-up (output tok/s vs. none)")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.suptitle("Speculative decoding: speed-up against concurrency")
    return _save(fig, out, "spec_speedup")


def quality_latency(rows: list[EvalRow], out: Path, multi_run: bool = False) -> Path | None:
    """Each eval's primary metric against the median latency of its own requests, one panel per task."""
    rows = [r for r in rows if r.result.value is not None and r.result.latency.e2e_s]
    if not rows:
        return None
    tasks = sorted({r.result.task for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r.result.task == task]
        for r in mine:
            x = r.result.latency.e2e_s.get("p50", NAN) * 1e3
            ax.scatter([x], [r.result.value], label=f"{_label(r.key, multi_run)} · s{r.key.seed}")
        ax.set_title(f"{task} ({mine[0].result.metric})", fontsize=9)
        ax.set_xlabel("request latency p50 (ms)")
        ax.set_ylabel(mine[0].result.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Quality against latency")
    return _save(fig, out, "quality_latency")


def all_plots(out: Path, makers: Iterable[Callable[[], Path | None]]) -> list[Path]:
    """Run each plot maker; keep the PNGs that were written."""
    return [p for make in makers if (p := make()) is not None]


def time_series_plot(windows: Sequence[WindowStats], out: Path, name: str, title: str,
                     slo: SLO | None = None) -> Path | None:
    """A run over time on one axis: offered and achieved rate (and goodput), in-flight and the server's queue,
    TTFT and TPOT p50/p99 (with their objectives), and the server's KV-cache usage, one window per point."""
    if not windows:
        return None
    xs = [(w.start_s + w.end_s) / 2 for w in windows]
    fig, axes = plt.subplots(5, 1, figsize=(9, 11), sharex=True)

    def line(ax: Any, values: Iterable[float | None], label: str, **kw: Any) -> None:
        ax.plot(xs, [_num(v) for v in values], marker=".", label=label, **kw)

    line(axes[0], (w.target_rate for w in windows), "offered (target)", linestyle="--")
    line(axes[0], (w.achieved_rate for w in windows), "sent")
    line(axes[0], (w.goodput_rate for w in windows), "goodput (met SLOs)")
    axes[0].set_ylabel("requests/s")
    line(axes[1], (w.in_flight for w in windows), "in flight (client)")
    line(axes[1], (w.queue for w in windows), "waiting (server)")
    line(axes[1], (w.running for w in windows), "running (server)")
    axes[1].set_ylabel("requests")
    for ax, metric, limit in ((axes[2], "ttft", slo.ttft_ms if slo else None),
                              (axes[3], "tpot", slo.tpot_ms if slo else None)):
        line(ax, (getattr(w, f"{metric}_p50_ms") for w in windows), f"{metric.upper()} p50")
        line(ax, (getattr(w, f"{metric}_p99_ms") for w in windows), f"{metric.upper()} p99")
        if limit is not None:
            ax.axhline(limit, color="red", linestyle=":", label="SLO")
        ax.set_ylabel(f"{metric.upper()} (ms)")
    line(axes[4], (None if w.kv_usage is None else 100 * w.kv_usage for w in windows), "KV cache used")
    axes[4].set_ylabel("KV cache (%)")
    axes[4].set_xlabel("time from the run's start (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    return _save(fig, out, name)


def goodput_over_time(rows: list[TimelineRow], out: Path, multi_run: bool = False) -> Path | None:
    """Trace replays: goodput (requests/s meeting every SLO) and the rate sent, per window, one line per cell."""
    rows = [r for r in rows if r.result.kind == "trace"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for row in rows:
        xs = [(w.start_s + w.end_s) / 2 for w in row.result.windows]
        label = f"{_label(row.key, multi_run)} · s{row.key.seed} · {row.scenario}"
        line = ax.plot(xs, [_num(w.goodput_rate) for w in row.result.windows], marker=".", label=f"{label} goodput")
        ax.plot(xs, [w.achieved_rate for w in row.result.windows], linestyle=":", color=line[0].get_color(),
                label=f"{label} sent")
    ax.set_xlabel("time from the run's start (s)")
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.suptitle("Trace replay: goodput over time")
    return _save(fig, out, "goodput_over_time")
