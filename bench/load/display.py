"""Live progress and the final summary table (rich). Display only: nothing here measures."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.load.records import RequestRecord
from bench.metrics import ClientHealth, LoadSummary, Stats, ttft
from bench.metrics.health import behind_advice
from bench.metrics.spread import Spread
from bench.metrics.steady import SteadyState


@dataclass
class Progress:
    """Running counts fed by the record sink (or by tailing ``requests.jsonl``)."""

    total: int | None
    done: int = 0
    errors: int = 0
    output_tokens: int = 0
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def add(self, record: RequestRecord) -> None:
        """Count one finished request."""
        self.done += 1
        if not record.ok:
            self.errors += 1
            return
        self.output_tokens += len(record.token_times)
        first = ttft(record)
        if first is not None:
            self.recent_ttft.append(first)


def _progress_table(p: Progress, elapsed: float, label: str) -> Table:
    table = Table(title=f"bench load  {label}", show_header=False, expand=False)
    total = "?" if p.total is None else str(p.total)
    recent = sorted(p.recent_ttft)
    median = f"{recent[len(recent) // 2] * 1e3:.1f} ms" if recent else "-"
    rate = p.done / elapsed if elapsed > 0 else 0.0
    tok = p.output_tokens / elapsed if elapsed > 0 else 0.0
    table.add_row("elapsed", f"{elapsed:.1f} s")
    table.add_row("done / total", f"{p.done} / {total}")
    table.add_row("errors", str(p.errors))
    table.add_row("req/s (so far)", f"{rate:.1f}")
    table.add_row("output tok/s (so far)", f"{tok:.0f}")
    table.add_row("TTFT p50 (recent)", median)
    return table


async def live_progress(
    console: Console, progress: Progress, now: Callable[[], float], label: str, stop: asyncio.Event
) -> None:
    """Redraw the progress table twice a second until ``stop`` is set."""
    start = now()
    with Live(
        _progress_table(progress, 0.0, label), console=console, refresh_per_second=4, transient=True
    ) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            live.update(_progress_table(progress, now() - start, label))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _client_rows(head: Table, c: ClientHealth) -> None:
    """Client lag and CPU, and a red line when the client fell behind."""
    busy = ", ".join(f"{100 * b:.0f}%" for b in c.cpu_busy)
    head.add_row("client loop lag p50 / p99 / max", f"{_fmt(c.lag_p50_ms)} / {_fmt(c.lag_p99_ms)} / "
                 f"{_fmt(c.lag_max_ms)} ms (limit {_fmt(c.lag_limit_ms)} ms)")  # fmt: skip
    head.add_row("client CPU per worker", busy or "-")
    verdict = f"[red]BEHIND[/red]: {behind_advice(c)}" if c.behind else "kept up"
    head.add_row("client", verdict)


def _steady_row(head: Table, st: SteadyState) -> None:
    """Output tok/s of the sending window's first and last thirds, and whether they agree."""
    verdict = "steady" if st.steady else "[yellow]NOT STEADY[/yellow] (warm up longer, or the load is too high)"
    rates = f"{st.first_third_tok_s:.1f} / {st.last_third_tok_s:.1f}"
    head.add_row("output tok/s first / last third", f"{rates}: {verdict}")


def _session_rows(head: Table, s: LoadSummary) -> None:
    """Multi-turn: sessions achieved against the target, and TTFT p50 and the cached share by turn."""
    f = s.sessions
    assert f is not None
    target = f"{f.achieved:.1f} of {f.target} target" if f.achieved is not None and f.target else "-"
    head.add_row("sessions (run; open at once)", f"{f.sessions}, {f.turns_mean:.1f} turns each; {target}")
    by_turn = ", ".join(f"{t.turn}: {_fmt(t.ttft_ms.p50)}" + (f" ({100 * t.cached_fraction:.0f}% cached)"
                                                              if t.cached_fraction is not None else "")
                        for t in s.turns)
    head.add_row("TTFT p50 by turn (ms)", by_turn or "-")


def summary_table(s: LoadSummary, title: str = "bench load summary") -> Table:
    """The end-of-run table: throughput, goodput and latency percentiles in ms."""
    head = Table(title=title, show_header=False)
    head.add_row("requests (ok / errors / warm-up)", f"{s.num_ok} / {s.num_errors} / {s.num_warmup}")
    if s.num_retried:
        head.add_row("sent more than once", f"{s.num_retried} (connection failed before a response)")
    head.add_row("duration", f"{s.duration_s:.2f} s")
    head.add_row("request throughput", f"{s.request_throughput:.2f} req/s")
    head.add_row("output throughput", f"{s.output_throughput_tok_s:.1f} tok/s")
    head.add_row("input throughput", f"{s.input_throughput_tok_s:.1f} tok/s")
    if s.goodput is not None:
        frac = "-" if s.goodput_fraction is None else f"{100 * s.goodput_fraction:.1f}%"
        head.add_row("goodput (all SLOs met)", f"{s.goodput:.2f} req/s ({frac})")
    if s.token_count_sources:
        counted = ", ".join(f"{k} {n}" for k, n in sorted(s.token_count_sources.items()))
        head.add_row("output tokens counted by", counted)
    for key, value in s.server.items():
        if value is not None:
            head.add_row(f"server: {key}", f"{value:.4g}")
    if s.client is not None:
        _client_rows(head, s.client)
    if s.steady_state is not None:
        _steady_row(head, s.steady_state)
    if s.prompt_tokens_check is not None:
        check = s.prompt_tokens_check
        verdict = "MISMATCH" if check.mismatch else "ok"
        head.add_row("prompt tokens (ours / server's)",
                     f"{check.ours} / {check.server} over {check.checked} requests: {verdict}")
    if s.sessions is not None:
        _session_rows(head, s)
    for err, count in s.errors.items():
        head.add_row(f"error x{count}", err)
    lat = Table(title="latency (ms)")
    for col in ("metric", "mean", "p50", "p90", "p95", "p99", "n"):
        lat.add_column(col, justify="right" if col != "metric" else "left")
    rows: list[tuple[str, Stats]] = [
        ("TTFT", s.ttft_ms),
        ("TPOT (excl. 1st)", s.tpot_ms),
        ("ITL (per token)", s.itl_ms),
        ("E2E (from send)", s.e2e_ms),
        ("E2E (from schedule)", s.e2e_sched_ms),
        ("client queue", s.queue_ms),
    ]
    for name, st in rows:
        lat.add_row(name, _fmt(st.mean), _fmt(st.p50), _fmt(st.p90), _fmt(st.p95), _fmt(st.p99), str(st.n))
    grid = Table.grid()
    grid.add_row(head)
    grid.add_row(lat)
    return grid


def spread_table(spreads: dict[str, Spread], title: str, warmup: list[float] | None = None) -> Table:
    """Mean, std, 95% interval and the per-run values of each figure over repeated runs."""
    table = Table(title=title)
    for col in ("figure", "mean", "std", "95% interval", "runs"):
        table.add_column(col, justify="left" if col in ("figure", "runs") else "right")
    for name, sp in spreads.items():
        interval = "-" if sp.ci95_low is None else f"{sp.ci95_low:.4g} .. {sp.ci95_high:.4g}"
        mean = "-" if sp.mean is None else f"{sp.mean:.4g}"
        std = "-" if sp.std is None else f"{sp.std:.3g}"
        table.add_row(name, mean, std, interval, ", ".join(f"{v:.4g}" for v in sp.values))
    if warmup:
        table.caption = "warm-up runs (left out), output tok/s: " + ", ".join(f"{v:.4g}" for v in warmup)
    return table
