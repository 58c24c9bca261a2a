"""Write ``report.md`` and a self-contained ``report.html`` (plots embedded as data URIs, no network).

Several run folders are compared side by side: every table has a ``run`` column and every plot labels
its series with the run when there is more than one.
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.evals.config import EvalSummary
from bench.load.sweep import CONCURRENCY_GAIN
from bench.metrics import LoadSummary
from bench.metrics.spread import spread
from bench.report import plots
from bench.report.headline import (
    HEADLINE_HEADER,
    TOP,
    FormatAtSlo,
    formats_at_slo,
    quality_text,
    ranked,
    slo_text,
    speed_only,
)
from bench.report.repeat import REPEAT_HEADER, REPEAT_NOTE, repeat_table
from bench.report.tables import (
    QUALITY_COLUMNS,
    KVRow,
    LoadRow,
    RunData,
    ScalingRow,
    SeedStats,
    SpeedUp,
    TimelineRow,
    cost_per_million,
    load_run,
    mean_std,
    scaling_rows,
    seed_table,
    speedups,
    stops_paying,
)
from bench.report.verdict import REFERENCE_HEADER, VERDICT_HEADER, reference_table, verdict_table
from bench.run.results import Environment, UnderLoadResult

METRICS_NOTE = ("Metric definitions: docs/metrics.md (TTFT from send; TPOT excludes the first token; ITL per "
                "token). Peak memory is the server process tree's RSS on CPU (NVML on GPU). KV capacity comes "
                "from the engine (its /metrics gauge or its startup log).")


@dataclass(frozen=True)
class Section:
    """One table of the report."""

    title: str
    header: tuple[str, ...]
    rows: list[list[str]]
    note: str = ""
    lines: tuple[str, ...] = ()  # a list after the table (the headline's other formats)


def _meets(row: LoadRow) -> str:
    """The "meets SLO" cell: ``yes``; ``no``; or, for a sweep step that met the SLO but was saturated (the sweep
    stops there and does not count it: :func:`bench.load.sweep.is_saturated`), ``SLO met, saturated``."""
    if row.meets_slo():
        return "yes"
    return "SLO met, saturated" if row.summary.saturated and row.slo_met_itself() else "no"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or not math.isfinite(float(value)):  # inf/nan (an overflowed mean) is no number to show
        return "–"
    return f"{float(value):,.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0%}"


def _pm(values: list[float], digits: int = 1) -> str:
    """Mean ± sample std, and the 95% interval of the mean with two seeds or more."""
    found = mean_std(values)
    if found is None:
        return "–"
    mean, std = found
    if std is None:
        return _fmt(mean, digits)
    sp = spread(values)
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)} (95%: {_fmt(sp.ci95_low, digits)}–{_fmt(sp.ci95_high, digits)})"


# ---- sections ----------------------------------------------------------------------------------


def headline_section(runs: list[RunData], gpu_hour_usd: float | None,
                     references: list[str] | None = None) -> Section:
    """Per engine and card: the format with the most output tokens/s at the SLO, its load, latency, memory and
    cost, and its quality against the reference (bench.report.headline); a line for each other format. No rows
    for runs without an SLO, or with evals but no quality_reference; a speed-only run's formats have no quality."""
    rows, lines, slos, cards, speed = [], [], [], [], []
    for run in runs:
        groups = ranked(formats_at_slo(run, gpu_hour_usd, references))
        if not groups:
            continue
        slos.append(f"{run.run_id}: {slo_text(run)}")
        if speed_only(run):
            speed.append(run.run_id)
        run_cards = sorted({card for (_, _, card) in groups})
        if len(run_cards) > 1:
            cards.append(f"{run.run_id} ran on {len(run_cards)} GPU models ({', '.join(run_cards)})")
        for (run_id, backend, card), formats in groups.items():
            best = formats[0]
            rows.append([run_id, backend, card, _format_name(best), *_at_slo_cells(best), quality_text(best)])
            lines += [f"{run_id} · {backend} · {card}: {_format_name(f)}: {_other_line(f, best)}"
                      for f in formats[1:]]
    note = (f"SLO ({'; '.join(slos)}). Per engine and card, the format (model and option set) with the most "
            "output tokens/s at a load point where ≥90% of requests met every SLO (for a sweep: the steps it "
            "passed): the Scaling and Summary tables' figure, its latency at that point, the peak memory and "
            "cost of the Summary table, the mean over seeds where several. Quality: each eval against the "
            "quality_reference ('Each format against the reference' below), relative change with its 95% "
            "interval and the verdict against the quality_target. Cards: NVML's name in the load point's "
            "gpu.jsonl, else run.yaml's; formats on different cards are not ranked together.")
    if cards:
        note += " " + "; ".join(cards) + ": each card is ranked on its own."
    if speed:
        note += f" {', '.join(speed)}: speed only (the matrix has no evals), so its formats show no quality."
    if any(TOP in row[5] for row in rows) or any(TOP in line for line in lines):
        note += (f" '{TOP.strip()}': every step of that sweep met the SLO, so the engine's limit lies beyond "
                 "the sweep's highest load and the figure is a lower bound.")
    return Section("Headline: the best format per engine at the SLO", HEADLINE_HEADER, rows, note, tuple(lines))


def _format_name(f: FormatAtSlo) -> str:
    seeds = len(f.cells)
    return f"{f.key.model} / {f.key.options}" + (f" ({seeds} seeds)" if seeds > 1 else "")


def _at_slo_cells(f: FormatAtSlo) -> list[str]:
    return [_fmt(f.mean("tok_s")), f.points, _fmt(f.mean("ttft_ms")), _fmt(f.mean("tpot_ms")),
            _fmt(f.mean("memory_gib"), 2), _fmt(f.mean("cost"), 2)]


def _other_line(f: FormatAtSlo, best: FormatAtSlo) -> str:
    tok_s, top = f.mean("tok_s"), best.mean("tok_s")
    share = f" ({tok_s / top:.0%} of the best)" if tok_s and top else ""
    capped = TOP if TOP in f.points else ""
    speed = f"{_fmt(tok_s)} out tok/s at SLO{share}{capped}" if tok_s else "no load point met the SLO"
    return f"{speed}; quality: {quality_text(f)}"


def seed_section(runs: list[RunData], headline: str | None, gpu_hour_usd: float | None) -> Section:
    """One row per configuration: quality, latency at the headline load, max throughput at the SLO, memory,
    MBU and cost, each mean ± std over seeds."""
    tables = [(run, seed_table(run, headline, gpu_hour_usd)) for run in runs]
    tasks = ["math-absdiff", "arc-challenge", "arc-easy", "squad"]
    extra = sorted({t for _, tb in tables for s in tb.values() for t in s.quality} - set(tasks))
    shown = [t for t in tasks if t != "arc-easy" or any("arc-easy" in s.quality for _, tb in tables
                                                          for s in tb.values())] + extra
    head = headline or "best at SLO"
    header = ("run", "backend", "model", "options", "seeds", *[QUALITY_COLUMNS.get(t, t) for t in shown],
              f"TTFT p50 ms @ {head}", f"TPOT p50 ms @ {head}", "max out tok/s at SLO", "peak mem GiB", "MBU",
              "$/1M out tok")
    rows = []
    for _run, table in tables:
        for (run_id, backend, model, options), s in sorted(table.items()):
            rows.append([run_id, backend, model, options, str(len(s.seeds)),
                         *[_quality_cell(s, t) for t in shown], *_seed_cells(s)])
    price = f"${gpu_hour_usd:g}/h" if gpu_hour_usd is not None else "no --gpu-hour-usd given"
    note = (f"Mean ± sample std over seeds, and the 95% interval of the mean (Student's t; two configurations "
            f"whose intervals overlap are within noise of each other). Max throughput at the SLO: the best "
            f"output tokens/s of any load "
            f"point where ≥90% of requests met every SLO (every point when no SLO is set). Cost at that "
            f"throughput, {price} per GPU (× tensor × pipeline × data parallel size).")
    return Section("Summary across seeds", header, rows, note)


def _quality_cell(s: SeedStats, task: str) -> str:
    """Mean ± std of the task's score; a seed with over 20% unextractable answers shows as FLAGGED instead."""
    value = _pm(s.quality.get(task, []), 3)
    if task not in s.flagged:
        return value
    return "FLAGGED: >20% no answer" + ("" if value == "–" else f" (other seeds {value})")


def _seed_cells(s: SeedStats) -> list[str]:
    return [_pm(s.ttft_ms), _pm(s.tpot_ms), _pm(s.max_tok_s), _pm(s.memory_gib, 2), _pm(s.mbu, 3), _pm(s.cost, 2)]


LOAD_HEADER = ("run", "backend", "model", "options", "seed", "scenario", "load", "ok/err", "req/s", "out tok/s",
               "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p50 ms", "E2E p50 ms", "E2E p99 ms",
               "goodput req/s", "meets SLO", "peak RSS GiB", "startup s", "$/1M out tok", "client",
               "client lag p99 ms", "steady", "TTFT gap ms", "TPOT gap ms", "prompt tokens")


def load_section(runs: list[RunData], gpu_hour_usd: float | None) -> Section:
    """The latency and throughput table, one row per cell and load point."""
    rows = []
    for run in runs:
        for r in run.loads:
            s = r.summary
            rows.append([
                run.run_id, r.key.backend, r.key.model, r.key.options, str(r.key.seed), r.scenario, r.point,
                f"{s.num_ok}/{s.num_errors}", _fmt(s.request_throughput, 2),
                _fmt(r.throughput), _fmt(r.stat("ttft_ms", "p50")), _fmt(r.stat("ttft_ms", "p99")),
                _fmt(r.stat("tpot_ms", "p50")), _fmt(r.stat("itl_ms", "p50")), _fmt(r.stat("e2e_ms", "p50")),
                _fmt(r.stat("e2e_ms", "p99")), _fmt(s.goodput, 2), _meets(r),
                _fmt(s.rss_peak_gib, 2), _fmt(r.startup_s),
                _fmt(cost_per_million(r.throughput, gpu_hour_usd, run.devices(r.key)), 2),
                *health_cells(s),
            ])
    note = ("meets SLO: yes where ≥90% of requests met every SLO and, in a sweep, the step was not saturated; "
            "'SLO met, saturated': the step met the SLO but was saturated (a concurrency step whose completion rate "
            f"grew less than {CONCURRENCY_GAIN - 1:.0%} over the step before; a rate step whose completions fell "
            "behind the offered rate), so the sweep stopped there and its best-at-SLO figure does not count "
            "it.") if any(
        _meets(r) == "SLO met, saturated" for run in runs for r in run.loads) else ""
    return Section("Latency and throughput", LOAD_HEADER, rows, note)


def health_cells(summary: LoadSummary) -> list[str]:
    """Whether the client kept up and its event-loop lag (p99 over the measured window), whether throughput held
    (first vs last third), the client − server TTFT and TPOT gaps, and whether the server counted our prompts as
    our tokenizer did (docs/metrics.md): "BEHIND", "NO" and "MISMATCH" mark a number that measured the client, a
    warm-up, or prompts of other lengths than asked."""
    client, steady, prompts = summary.client, summary.steady_state, summary.prompt_tokens_check
    kept = "–" if client is None else "BEHIND" if client.behind else "ok"
    held = "–" if steady is None else "yes" if steady.steady else "NO"
    counted = "–" if prompts is None else "MISMATCH" if prompts.mismatch else "ok"
    lag = _fmt(client.lag_p99_ms if client is not None else None, 2)
    return [kept, lag, held, _fmt(summary.server.ttft_gap_ms, 2), _fmt(summary.server.tpot_gap_ms, 2),
            counted]


SCALING_HEADER = ("run", "backend", "model", "options", "seed", "GPUs", "best load", "req/s", "out tok/s",
                  "out tok/s per GPU", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms",
                  "KV capacity tok", "startup s")


def scaling_section(runs: list[RunData]) -> Section:
    """Throughput at the SLO in total and per GPU, for runs where a configuration spans several GPUs."""
    scaling = [(run, r) for run in runs for r in scaling_rows(run)]
    if not any(r.devices > 1 for _, r in scaling):
        return Section("Scaling across GPUs", SCALING_HEADER, [])
    rows = [[run.run_id, r.key.backend, r.key.model, r.key.options, str(r.key.seed), str(r.devices),
             *_scaling_cells(r)] for run, r in scaling]
    note = ("GPUs = tensor × pipeline × data parallel size. Best load: the load point with the most output tokens/s "
            "where ≥90% of requests met every SLO (for a sweep: the steps it passed). KV capacity in tokens as the "
            "engine reports it at start-up, for the whole server (all its GPUs).")
    return Section("Scaling across GPUs", SCALING_HEADER, rows, note)


def _scaling_cells(r: ScalingRow) -> list[str]:
    kv = _fmt(r.kv.capacity_tokens, 0)
    b = r.best
    if b is None:
        return ["none met the SLO", "–", "–", "–", "–", "–", "–", "–", kv, "–"]
    return [f"{b.scenario}/{b.point}", _fmt(b.summary.request_throughput, 2), _fmt(b.throughput),
            _fmt(r.per_device), _fmt(b.stat("ttft_ms", "p50")), _fmt(b.stat("ttft_ms", "p99")),
            _fmt(b.stat("tpot_ms", "p50")), _fmt(b.stat("tpot_ms", "p99")), kv, _fmt(b.startup_s)]


KV_HEADER = ("run", "backend", "model", "options", "seed", "kv dtype", "prefix cache", "KV capacity tok", "KV MiB",
             "tok/GiB", "gain vs auto", "context", "TTFT p50 ms", "TPOT p50 ms", "fits (KV / served)",
             "peak RSS GiB")


def kv_section(runs: list[RunData]) -> Section:
    """KV capacity and latency against context length, per kv-cache cell."""
    rows = []
    for run in runs:
        auto = _auto_density(run.kv)
        for r in sorted(run.kv, key=lambda r: (r.key.backend, r.key.model, r.key.options, r.key.seed, r.length)):
            dens = r.kv.tokens_per_gib
            ref = auto.get((r.key.backend, r.key.model, r.key.seed))
            gain = f"{dens / ref:.2f}×" if dens and ref else "–"
            kv_bytes = r.kv.kv_bytes
            fit = f"{_fmt(r.fit.kv, 0)} / {_fmt(r.fit.served, 0)}"
            rows.append([run.run_id, r.key.backend, r.key.model, r.key.options, str(r.key.seed), r.kv_dtype,
                         "on" if r.prefix_caching else "off", _fmt(r.kv.capacity_tokens, 0),
                         _fmt(kv_bytes / 2**20 if kv_bytes else None), _fmt(dens, 0), gain, str(r.length),
                         _fmt(r.summary.ttft_ms.p50), _fmt(r.summary.tpot_ms.p50), fit,
                         _fmt(r.summary.rss_peak_gib, 2)])
    note = ("Capacity in tokens as the engine reports it; gain = tokens per GiB of KV memory against the same "
            "engine's auto dtype. 'fits': requests of that context (+ output) the KV cache holds at once, and "
            "that capped by max_batch. One request at a time per context length.")
    return Section("KV cache", KV_HEADER, rows, note)


def _auto_density(rows: list[KVRow]) -> dict[tuple[str, str, int], float]:
    found: dict[tuple[str, str, int], float] = {}
    for r in rows:
        if r.kv_dtype == "auto" and r.kv.tokens_per_gib:
            found.setdefault((r.key.backend, r.key.model, r.key.seed), r.kv.tokens_per_gib)
    return found


PREFIX_HEADER = ("run", "backend", "model", "options", "seed", "prefix cache", "hit rate shared-prefix",
                 "hit rate unique", "TTFT p50 ms shared", "TTFT p50 ms unique")


def prefix_section(runs: list[RunData]) -> Section:
    """Prefix-cache hit rate with a shared-prefix workload against unique prompts."""
    rows = []
    for run in runs:
        for p in run.prefix:
            rows.append([run.run_id, p.key.backend, p.key.model, p.key.options, str(p.key.seed),
                         "on" if p.prefix_caching else "off",
                         _pct(p.shared.server.prefix_cache_hit_rate),
                         _pct(p.unique.server.prefix_cache_hit_rate),
                         _fmt(p.shared.ttft_ms.p50), _fmt(p.unique.ttft_ms.p50)])
    note = ("Hit rate from the server's counters (vLLM prefix_cache_hits/queries; llama-server cached / "
            "(cached + processed) prompt tokens).")
    return Section("Prefix cache", PREFIX_HEADER, rows, note)


SPEC_HEADER = ("run", "backend", "model", "options", "seed", "method", "concurrency", "out tok/s", "TPOT p50 ms",
               "speed-up", "TPOT speed-up", "acceptance rate", "acceptance length", "stops paying at")


def spec_section(runs: list[RunData]) -> tuple[Section, list[SpeedUp]]:
    """Every speculative point, with the speed-up against the same engine without speculation."""
    rows, ups = [], []
    for run in runs:
        found = speedups(run.spec)
        ups += found
        # keyed by the baseline option set too: two option sets (bf16 and fp8 weights) may speculate on one model
        index = {(s.backend, s.model, s.baseline, s.method, s.seed, s.concurrency): s for s in found}
        groups: dict[tuple[str, str, str, str, int], list[SpeedUp]] = defaultdict(list)
        for s in found:
            groups[(s.backend, s.model, s.baseline, s.method, s.seed)].append(s)
        for r in sorted(run.spec, key=lambda r: (r.key.backend, r.key.model, r.method != "none", r.method,
                                                 r.key.seed, r.concurrency)):
            up = index.get((r.key.backend, r.key.model, r.baseline, r.method, r.key.seed, r.concurrency))
            server = r.summary.server
            stop = stops_paying(groups.get((r.key.backend, r.key.model, r.baseline, r.method, r.key.seed), []))
            rows.append([run.run_id, r.key.backend, r.key.model, r.key.options, str(r.key.seed), r.method,
                         str(r.concurrency), _fmt(r.summary.output_throughput_tok_s), _fmt(r.summary.tpot_ms.p50),
                         f"{up.speedup:.2f}×" if up and up.speedup else ("1.00×" if r.method == "none" else "–"),
                         f"{up.tpot_ratio:.2f}×" if up and up.tpot_ratio else ("1.00×" if r.method == "none" else "–"),
                         _pct(server.spec_acceptance_rate), _fmt(server.spec_acceptance_length, 2),
                         "–" if r.method == "none" else (f"c{stop}" if stop else "pays at every concurrency")])
    note = ("Speed-up = output tokens/s against the same engine, model and options without speculation, at the "
            "same concurrency and seed; TPOT speed-up = TPOT p50 without / with. Acceptance from the server's "
            "counters (accepted / drafted tokens; length = 1 + accepted / drafts).")
    return Section("Speculative decoding", SPEC_HEADER, rows, note), ups


EVAL_HEADER = ("run", "backend", "model", "options", "seed", "task", "mode", "metric", "value", "95% CI", "n",
               "errors", "no answer", "latency p50 ms", "under load")


def _no_answer_cell(result: EvalSummary) -> str:
    rate = result.no_answer_rate
    if rate is None:
        return "–"
    return f"{rate:.0%}" + (" FLAGGED" if result.no_answer_flag else "")


def _under_load_cell(under: UnderLoadResult | None) -> str:
    """The loaded score beside the idle one: value, difference, answers that changed, at which load."""
    if under is None:
        return "–"
    delta = under.delta
    diff = "" if delta is None else f" (Δ {delta:+.3f})"
    changed = f"{under.changed_answers}/{under.compared} answers changed"
    return f"{_fmt(under.result.value, 3)}{diff}, {changed} @ {under.load}"


def eval_section(runs: list[RunData]) -> Section:
    """Quality rows."""
    rows = []
    for run in runs:
        for e in run.evals:
            res = e.result
            ci = res.ci95
            p50 = res.latency.e2e_s.get("p50")
            rows.append([run.run_id, e.key.backend, e.key.model, e.key.options, str(e.key.seed), res.task,
                         res.mode, res.metric, _fmt(res.value, 3),
                         f"{ci[0]:.3f}–{ci[1]:.3f}" if ci and all(map(math.isfinite, ci)) else "–",
                         str(res.n_samples), str(res.n_errors),
                         _no_answer_cell(res), _fmt(p50 * 1e3 if p50 else None), _under_load_cell(e.under_load)])
    note = ("no answer: the share of samples with no extractable answer (an empty reply, no letter, no number); "
            "over 20% is FLAGGED and the seed table shows no score for it. under load: the same eval while bench "
            "load held the server at the given load; greedy decoding should change no answer, so a changed answer "
            "is a finding about the engine.")
    return Section("Quality", EVAL_HEADER, rows, note)


def verdict_section(runs: list[RunData], references: list[str] | None = None) -> Section:
    """Each quantized entry against its derived_from source on each eval task, paired on the same documents, with
    the matrix's quality target (bench.report.verdict); runs with a quality reference are left to
    :func:`reference_section`."""
    rows, note = verdict_table([(run.run_dir, run.run_id, run.meta) for run in runs], references)
    return Section("Quantized against source: the verdict", VERDICT_HEADER, rows, note)


def reference_section(runs: list[RunData], references: list[str] | None = None) -> Section:
    """Each format (model and option set) against the run's quality_reference on each eval task, paired on the
    same documents (bench.report.verdict); no rows for runs without a reference."""
    rows, note = reference_table([(run.run_dir, run.run_id, run.meta) for run in runs], references)
    return Section("Each format against the reference", REFERENCE_HEADER, rows, note)


def repeat_section(runs: list[RunData]) -> Section:
    """Two evals of one configuration in one cell (a repeat, or the same at another concurrency), paired on
    documents: the noise floor of the verdicts above (bench.report.repeat); no rows when no cell has such a pair."""
    rows = repeat_table([(run.run_dir, run.run_id) for run in runs])
    return Section("Repeatability", REPEAT_HEADER, rows, REPEAT_NOTE)


def problems_section(runs: list[RunData]) -> Section:
    """Cells skipped or failed, and scenarios skipped inside cells that ran, with the reason."""
    rows = [[p.run, p.cell, p.scenario or "–", p.status, p.reason] for run in runs for p in run.problems]
    note = ("A row that names a scenario is one skipped inside a cell that ran: the cell's other results are in "
            "the tables above. A row without one is the whole cell.")
    return Section("Cells skipped or failed", ("run", "cell", "scenario", "status", "reason"), rows,
                   note if any(p.scenario for run in runs for p in run.problems) else "")


def _environment_lines(runs: list[RunData]) -> list[str]:
    lines = []
    for run in runs:
        env = (run.meta.environment if run.meta else None) or Environment()
        pkgs = ", ".join(f"{k} {v}" for k, v in env.packages.items())
        venvs = ", ".join(f"{k}: vllm {v}" for k, v in env.engine_venvs.items())
        gpus = ", ".join(g.name for g in env.gpus) or "none"
        lines.append(f"{run.run_id}: CPU {env.cpu} ×{env.cpu_count}, GPU {gpus}, "
                     f"git {str(env.git_sha)[:10]}{' (dirty)' if env.git_dirty else ''}; {pkgs}"
                     f"{'; ' + venvs if venvs else ''}")
    return lines


# ---- output ------------------------------------------------------------------------------------


REPLAY_HEADER = ("run", "backend", "model", "options", "seed", "scenario", "requests", "ok", "goodput req/s",
                 "goodput worst window", "good %", "TTFT p99 ms", "worst window TTFT p99 ms")
KNEE_HEADER = ("run", "backend", "model", "options", "seed", "scenario", "schedule", "knee req/s", "broken",
               "p99 at knee ms", "SLO ms", "at s", "highest rate sent req/s")


def _timelines(runs: list[RunData], kind: str) -> Iterator[tuple[RunData, TimelineRow]]:
    """Each run's timeline results of one kind (``trace`` or ``schedule``), with their run."""
    return ((run, t) for run in runs for t in run.timelines if t.result.kind == kind)


def replay_section(runs: list[RunData]) -> Section:
    """Trace replays: how much of the offered trace met the SLOs, overall and in the worst window."""
    rows = []
    for run, t in _timelines(runs, "trace"):
        point, windows = t.result.point, [w for w in t.result.windows if w.sent]
        good = [w.goodput_rate for w in windows if w.goodput_rate is not None]
        worst = max((w.ttft_p99_ms for w in windows if w.ttft_p99_ms is not None), default=None)
        rows.append([run.run_id, t.key.backend, t.key.model, t.key.options, str(t.key.seed), t.scenario,
                     str(point.num_requests), str(point.num_ok), _fmt(point.goodput, 2),
                     _fmt(min(good) if good else None, 2), _pct(point.goodput_fraction),
                     _fmt(point.ttft_ms.p99), _fmt(worst)])
    note = ("Requests sent at the trace's own times; goodput counts requests meeting every SLO, per second, over "
            "the run and in its worst window (the goodput-over-time plot shows every window).")
    return Section("Trace replay: goodput over time", REPLAY_HEADER, rows, note)


def knee_section(runs: list[RunData]) -> Section:
    """Rate schedules: the lowest offered rate at which p99 TTFT or TPOT broke its SLO."""
    rows = []
    for run, t in _timelines(runs, "schedule"):
        knee = t.result.knee
        label = t.result.arrival.removeprefix("schedule=")
        top = max((w.achieved_rate for w in t.result.windows), default=None)
        rows.append([run.run_id, t.key.backend, t.key.model, t.key.options, str(t.key.seed), t.scenario, label,
                     _fmt(knee.rate, 2) if knee else "none", knee.metric.upper() if knee else "–",
                     _fmt(knee.p99_ms) if knee else "–", _fmt(knee.slo_ms) if knee else "–",
                     _fmt(knee.at_s) if knee else "–", _fmt(top, 2)])
    note = ("Knee: the lowest offered rate (the schedule's target over a window) whose window's p99 TTFT or TPOT "
            "was above its SLO; 'none' means every window met them, up to the highest rate sent.")
    return Section("Rate schedule: the latency knee", KNEE_HEADER, rows, note)


TURN_HEADER = ("run", "backend", "model", "options", "seed", "scenario", "sessions", "prefix caching", "turn",
               "turns ok", "prompt tok", "cached %", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "achieved sessions")


def turn_section(runs: list[RunData]) -> Section:
    """Multi-turn sessions: TTFT and TPOT by turn index, the prefix cache's share of each turn's prompt, and the
    sessions the client kept open against the target."""
    rows = []
    for run in runs:
        for s in run.sessions:
            figures = s.summary.sessions
            achieved = f"{figures.achieved:.1f} / {figures.target}" if figures and figures.achieved is not None \
                and figures.target else "–"
            for t in s.summary.turns:
                rows.append([run.run_id, s.key.backend, s.key.model, s.key.options, str(s.key.seed), s.scenario,
                             s.point, "on" if s.prefix_caching else "off", str(t.turn), str(t.n),
                             _fmt(t.prompt_tokens_mean), _pct(t.cached_fraction), _fmt(t.ttft_ms.p50),
                             _fmt(t.ttft_ms.p99), _fmt(t.tpot_ms.p50), achieved])
    note = ("Each turn sends the whole conversation so far plus a new user message; turn 0 is each session's first. "
            "cached %: prompt tokens the server reported from its prefix cache (usage.prompt_tokens_details), "
            "'–' where it reports none. Achieved sessions: open at once on average over the sending window, less "
            "the time turns were sent late, against the target.")
    return Section("TTFT by turn", TURN_HEADER, rows, note)


def write_report(run_dirs: list[Path], out: Path, gpu_hour_usd: float | None = None,
                 headline: str | None = None, quality_reference: list[str] | None = None) -> list[Path]:
    """Write report.md, report.html and the PNG plots for one run or several side by side.

    ``quality_reference`` overrides each run's matrix field of that name (the bf16 models every format's
    quality is compared with; with an SLO, the report then opens with the headline)."""
    runs = [load_run(d) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    matrices = [r.matrix for r in runs if r.matrix is not None]
    if gpu_hour_usd is None:
        gpu_hour_usd = next((m.gpu_hour_usd for m in matrices if m.gpu_hour_usd is not None), None)
    headline = headline or next((h for m in matrices if (h := m.headline())), None)
    spec, ups = spec_section(runs)
    sections = [headline_section(runs, gpu_hour_usd, quality_reference),
                seed_section(runs, headline, gpu_hour_usd), scaling_section(runs), load_section(runs, gpu_hour_usd),
                kv_section(runs),
                prefix_section(runs), spec, replay_section(runs), knee_section(runs),
                turn_section(runs), eval_section(runs),
                verdict_section(runs, quality_reference), reference_section(runs, quality_reference),
                repeat_section(runs), problems_section(runs)]
    sections = [s for s in sections if s.rows]
    multi = len(runs) > 1
    loads = [r for run in runs for r in run.loads]
    # The CDFs at the headline load; without one (sweeps), at each configuration's best load meeting the SLO.
    cdf_rows = ([r for r in loads if f"{r.scenario}/{r.point}" == headline] if headline
                else [s.best for run in runs for s in scaling_rows(run) if s.best]) or loads
    pngs = plots.all_plots(out, [
        lambda: plots.throughput_latency(loads, out, multi),
        lambda: plots.latency_cdfs(cdf_rows, out, multi),
        lambda: plots.kv_context([r for run in runs for r in run.kv], out, multi),
        lambda: plots.spec_speedup(ups, out, multi),
        lambda: plots.quality_latency([e for run in runs for e in run.evals], out, multi),
        lambda: plots.goodput_over_time([t for run in runs for t in run.timelines], out, multi),
        *(lambda t=t, i=i: plots.time_series_plot(t.result.windows, out, f"schedule_{i}",
                                                  f"{t.key.label} · {t.scenario}")
          for i, (_, t) in enumerate(_timelines(runs, "schedule"))),
    ])
    title = "servebench report: " + ", ".join(r.run_id for r in runs)
    env = _environment_lines(runs)
    paths = [out / "report.md", out / "report.html"]
    paths[0].write_text(_markdown(title, sections, pngs, env))
    paths[1].write_text(_html(title, sections, pngs, env))
    return paths + pngs


def _md_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(title: str, sections: list[Section], pngs: list[Path], env: list[str]) -> str:
    md = [f"# {title}", ""]
    for s in sections:
        md += [f"## {s.title}", "", _md_table(s.header, s.rows), ""]
        if s.lines:
            md += [*[f"- {line}" for line in s.lines], ""]
        if s.note:
            md += [s.note, ""]
    if pngs:
        md += ["## Plots", "", *[f"![{p.stem}]({p.name})\n" for p in pngs]]
    md += ["## Environment", "", *[f"- {line}" for line in env], "", METRICS_NOTE, ""]
    return "\n".join(md)


def _html_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title: str, sections: list[Section], pngs: list[Path], env: list[str]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts += [f"<h2>{html.escape(s.title)}</h2>", _html_table(s.header, s.rows)]
        if s.lines:
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in s.lines) + "</ul>")
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
    if pngs:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
                  f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
                  for p in pngs]
    parts += ["<h2>Environment</h2>", "<ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in env) + "</ul>",
              f"<p class='note'>{html.escape(METRICS_NOTE)}</p>"]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px;margin-bottom:.5em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
             "img{max-width:100%}.note{color:#555;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
