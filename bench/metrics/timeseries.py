"""The run as a time series (pure: no I/O): per window of the run, what was offered, what was achieved, how
latency held, and what the server's /metrics said, all on the run's one clock.

A request belongs to the window in which it was *sent* (its TTFT and TPOT describe the load it met then);
in-flight is the mean number of requests between send and end over the window; the server's figures are the
means of the scrape samples taken in the window. :func:`latency_knee` reads the series of a run whose rate
changes over time and names the lowest offered rate at which p99 TTFT or TPOT broke its objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench.load.records import RequestRecord
from bench.metrics.client import SLO, meets_slo, stats_ms, tpot, ttft
from bench.metrics.server import KV_USAGE, RUNNING, WAITING

TIMESERIES_FILE = "timeseries.json"
# A window's p99 is judged only over at least this many requests (fewer make it the maximum of a handful).
KNEE_MIN_REQUESTS = 1


class WindowStats(BaseModel):
    """One window of the run (times in seconds from the run's start)."""

    model_config = ConfigDict(frozen=True)

    start_s: float
    end_s: float
    target_rate: float | None = None
    sent: int = 0
    achieved_rate: float = 0.0
    completed: int = 0
    errors: int = 0
    in_flight: float = 0.0
    goodput_rate: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p99_ms: float | None = None
    kv_usage: float | None = None
    queue: float | None = None
    running: float | None = None


class Knee(BaseModel):
    """Where latency turned: the lowest offered rate whose window broke an objective at p99."""

    model_config = ConfigDict(frozen=True)

    rate: float
    at_s: float
    metric: str
    p99_ms: float
    slo_ms: float


def time_series(
    records: Sequence[RequestRecord],
    server_rows: Sequence[Any],
    t0: float,
    window_s: float,
    slo: SLO | None = None,
    expected: Callable[[float], float] | None = None,
) -> list[WindowStats]:
    """The measured requests and scrape rows cut into windows of ``window_s`` from ``t0``.

    ``expected(t)``, when the load has a target, is the number of requests it meant to send in ``[0, t]``;
    a window's target rate is its growth over the window. ``slo`` set: each window's goodput (requests/s
    meeting every objective).
    """
    measured = [r for r in records if not r.warmup]
    if not measured:
        return []
    scheduled = max(r.scheduled_t for r in measured)
    last = max(max(r.end_t for r in measured), scheduled)
    count = max(int((last - t0) // window_s) + 1, 1)
    out = []
    for i in range(count):
        start, end = t0 + i * window_s, t0 + (i + 1) * window_s
        # past the last scheduled request the run offers nothing more: no target there
        target = expected if start <= scheduled else None
        out.append(_window(measured, server_rows, start, end, t0, slo, target))
    return out


def _window(records: Sequence[RequestRecord], rows: Sequence[Any], start: float, end: float, t0: float,
            slo: SLO | None, expected: Callable[[float], float] | None) -> WindowStats:
    width = end - start
    sent = [r for r in records if start <= r.sent_t < end]
    busy = sum(max(0.0, min(r.end_t, end) - max(r.sent_t, start)) for r in records)
    values = [v for t, v in map(_sample, rows) if start <= t < end]
    good = None if slo is None or not slo.is_set() else sum(meets_slo(r, slo) for r in sent) / width
    first, per_token = stats_ms(ttft(r) for r in sent if r.ok), stats_ms(tpot(r) for r in sent if r.ok)
    return WindowStats(
        start_s=start - t0, end_s=end - t0,
        target_rate=None if expected is None else (expected(end - t0) - expected(start - t0)) / width,
        sent=len(sent), achieved_rate=len(sent) / width,
        completed=sum(1 for r in records if start <= r.end_t < end), errors=sum(1 for r in sent if not r.ok),
        in_flight=busy / width, goodput_rate=good,
        ttft_p50_ms=first.p50, ttft_p99_ms=first.p99, tpot_p50_ms=per_token.p50, tpot_p99_ms=per_token.p99,
        kv_usage=_mean(values, KV_USAGE), queue=_mean(values, WAITING), running=_mean(values, RUNNING),
    )  # fmt: skip


def _sample(row: Any) -> tuple[float, dict[str, float]]:
    """A scrape row's time and values (a ``server_metrics.jsonl`` line as a dict, or a validated row)."""
    if isinstance(row, dict):
        return float(row.get("t", -1.0)), row.get("values", {})
    return float(row.t), dict(row.values)


def _mean(values: Sequence[dict[str, float]], names: Sequence[str]) -> float | None:
    found = [next(v[n] for n in names if n in v) for v in values if any(n in v for n in names)]
    return sum(found) / len(found) if found else None


def latency_knee(windows: Sequence[WindowStats], slo: SLO) -> Knee | None:
    """The lowest offered rate (the target where there is one, else the achieved rate) of a window whose p99
    TTFT or TPOT is above its objective; None when no window broke one (or no TTFT/TPOT objective is set)."""
    broken = []
    for w in windows:
        if w.sent < KNEE_MIN_REQUESTS:
            continue
        rate = w.target_rate if w.target_rate is not None else w.achieved_rate
        for metric, p99, limit in (("ttft", w.ttft_p99_ms, slo.ttft_ms), ("tpot", w.tpot_p99_ms, slo.tpot_ms)):
            if p99 is not None and limit is not None and p99 > limit:
                broken.append(Knee(rate=rate, at_s=w.start_s, metric=metric, p99_ms=p99, slo_ms=limit))
    return min(broken, key=lambda k: (k.rate, k.at_s)) if broken else None


class TimeSeries(BaseModel):
    """What ``timeseries.json`` holds: the windows and, for a rate schedule, where latency turned."""

    window_s: float
    windows: list[WindowStats]
    knee: Knee | None = None
