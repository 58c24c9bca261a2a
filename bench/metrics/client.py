"""Pure client-side metric functions over :class:`~bench.load.records.RequestRecord` (no I/O, no clock, no printing).

Each metric is defined once here and in ``docs/metrics.md``; times are seconds in the per-request
functions and milliseconds in :class:`LoadSummary`.

- TTFT = first content token − sent
- TPOT = (E2E − TTFT) / (N − 1), N = output tokens; excludes the first token
- ITL  = per token: a chunk's gap to the previous chunk split evenly over the tokens it carries
- E2E  = last token − sent; E2E (sched) = last token − scheduled (corrects coordinated omission)
- queue = sent − scheduled (client-side waiting)
- duration = the measured window: first measured send → end of the last measured stream
- offered rate = requests scheduled after the first instant / scheduling window
- sustained rate = offered rate / slope of completion time against scheduled time
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.load.records import RequestRecord
from bench.metrics.health import ClientHealth
from bench.metrics.prompt_check import PromptTokenCheck, prompt_token_check
from bench.metrics.server import ServerFigures
from bench.metrics.steady import SteadyState, steady_state

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
# A load point meets its SLOs when at least this fraction of its requests meets every objective (the sweep's
# default target, and the report's).
GOODPUT_TARGET = 0.9


class SLO(BaseModel):
    """Service-level objectives in milliseconds; ``None`` means "not constrained"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float | None = Field(default=None, gt=0, description="time to first token (ms)")
    tpot_ms: float | None = Field(default=None, gt=0, description="time per output token after the first (ms)")
    e2e_ms: float | None = Field(default=None, gt=0, description="end to end, judged from the scheduled send time")

    def is_set(self) -> bool:
        """At least one objective is given."""
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))


class Stats(BaseModel):
    """Distribution summary in milliseconds."""

    model_config = ConfigDict(frozen=True)

    n: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None


class TurnStats(BaseModel):
    """One turn index over every session."""

    model_config = ConfigDict(frozen=True)

    turn: int
    n: int
    ttft_ms: Stats
    tpot_ms: Stats
    prompt_tokens_mean: float | None = None
    cached_tokens_mean: float | None = None
    cached_fraction: float | None = Field(default=None, description="Σ cached tokens / Σ prompt tokens, over the "
                                          "turns whose usage gave cached_tokens")


class SessionFigures(BaseModel):
    """How many sessions ran, and how many were open at once against the target."""

    model_config = ConfigDict(frozen=True)

    sessions: int
    turns_mean: float
    target: int | None = Field(default=None, description="sessions asked to be open at once (users)")
    achieved: float | None = Field(default=None, description="sessions open at once, mean over the sending window")
    late_ms: Stats = Field(default_factory=Stats, description="turns sent after they were due: sent − scheduled")


class LoadSummary(BaseModel):
    """Everything ``bench load`` reports about one run (warm-up requests excluded)."""

    model_config = ConfigDict(extra="allow")

    num_requests: int
    num_ok: int
    num_errors: int
    num_warmup: int = 0
    num_retried: int = Field(default=0, description="requests sent more than once (their record's attempts > 1)")
    duration_s: float
    request_throughput: float = Field(description="successful requests / duration (req/s)")
    offered_rate: float | None = Field(
        default=None, description="requests scheduled after the first instant / scheduling window (req/s)"
    )
    sustained_rate: float | None = Field(
        default=None, description="offered rate / slope of end_t against scheduled_t (req/s)"
    )
    output_throughput_tok_s: float
    input_throughput_tok_s: float
    total_prompt_tokens: int
    total_output_tokens: int
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    e2e_sched_ms: Stats
    queue_ms: Stats
    slo: SLO = SLO()
    goodput: float | None = Field(default=None, description="requests meeting every SLO / duration (req/s)")
    goodput_fraction: float | None = None
    token_count_sources: dict[str, int] = Field(default_factory=dict)
    errors: dict[str, int] = Field(default_factory=dict)
    server: ServerFigures = Field(default_factory=ServerFigures)
    client: ClientHealth | None = Field(default=None, description="the load client's own lag and CPU use")
    steady_state: SteadyState | None = Field(
        default=None, description="output tok/s in the first vs the last third of the sending window"
    )
    prompt_tokens_check: PromptTokenCheck | None = Field(
        default=None, description="our tokenizer's count of the first prompts against the server's usage"
    )
    turns: list[TurnStats] = Field(default_factory=list, description="multi-turn: TTFT/TPOT by turn index")
    sessions: SessionFigures | None = Field(default=None, description="multi-turn: sessions achieved vs target")


# ---- per-request metrics (seconds) -------------------------------------------------------------


def ttft(r: RequestRecord) -> float | None:
    """Time to first token: first content token − sent."""
    return None if r.first_token_t is None else r.first_token_t - r.sent_t


def e2e(r: RequestRecord) -> float:
    """End-to-end latency from send: last token − sent."""
    return r.end_t - r.sent_t


def e2e_from_schedule(r: RequestRecord) -> float:
    """End-to-end latency from the scheduled send time (coordinated-omission corrected)."""
    return r.end_t - r.scheduled_t


def queue_time(r: RequestRecord) -> float:
    """Client-side queueing: sent − scheduled."""
    return r.sent_t - r.scheduled_t


def num_output_tokens(r: RequestRecord) -> int:
    """N: output tokens (usage-derived when the server sent usage; one time per token)."""
    return len(r.token_times)


def tpot(r: RequestRecord) -> float | None:
    """Time per output token excluding the first: (E2E − TTFT) / (N − 1); None when N < 2."""
    first = ttft(r)
    n = num_output_tokens(r)
    if first is None or n < 2:
        return None
    return (e2e(r) - first) / (n - 1)


def itl(r: RequestRecord) -> list[float]:
    """Per-token inter-token latencies (N − 1 values; their sum is E2E − TTFT).

    Tokens that arrived together (same timestamp: one chunk, or one socket read) share the gap to
    the previous arrival evenly. Extra tokens in the first chunk arrive with the first token: gap 0.
    """
    times = r.token_times
    out: list[float] = []
    i, n = 0, len(times)
    prev: float | None = None
    while i < n:
        j = i
        while j < n and times[j] == times[i]:
            j += 1
        group = j - i
        if prev is None:
            out.extend([0.0] * (group - 1))
        else:
            out.extend([(times[i] - prev) / group] * group)
        prev = times[i]
        i = j
    return out


def meets_slo(r: RequestRecord, slo: SLO) -> bool:
    """A successful request within every objective (E2E is judged from the scheduled time)."""
    if not r.ok:
        return False
    first, per_tok = ttft(r), tpot(r)
    if slo.ttft_ms is not None and (first is None or first * 1e3 > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and per_tok is not None and per_tok * 1e3 > slo.tpot_ms:
        return False
    return not (slo.e2e_ms is not None and e2e_from_schedule(r) * 1e3 > slo.e2e_ms)


# ---- aggregates --------------------------------------------------------------------------------


def stats_ms(values_s: Iterable[float | None]) -> Stats:
    """Mean, percentiles (linear interpolation, like numpy/vLLM), min and max, in ms."""
    arr = np.fromiter((v for v in values_s if v is not None), dtype=np.float64) * 1e3
    if arr.size == 0:
        return Stats()
    pct = np.percentile(arr, PERCENTILES)
    return Stats(
        n=int(arr.size),
        mean=float(arr.mean()),
        p50=float(pct[0]),
        p90=float(pct[1]),
        p95=float(pct[2]),
        p99=float(pct[3]),
        min=float(arr.min()),
        max=float(arr.max()),
    )


class Window(NamedTuple):
    """The measured window, in the records' clock (seconds)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        """``end − start``, never negative."""
        return max(self.end - self.start, 0.0)


def measured_window(records: Sequence[RequestRecord]) -> Window | None:
    """The one window every figure of a run covers: the first measured request's send to the end of the
    last measured request's stream (None without any). Warm-up requests are left out.

    Throughput divides by its duration, and the server-side figures (:mod:`bench.metrics.server`) take
    their scrape rows over it.
    """
    measured = [r for r in records if not r.warmup]
    if not measured:
        return None
    return Window(min(r.sent_t for r in measured), max(max(r.end_t, r.closed_t or r.end_t) for r in measured))


def offered_rate(records: Sequence[RequestRecord]) -> float | None:
    """The rate requests were scheduled at: those after the first instant / the scheduling window.

    Open loop: the realised timetable, (n − 1) / (last − first scheduled). Closed loop: the ``c``
    users' first requests share one instant and every later one follows a completion, so this is
    the completion rate. ``None`` with fewer than two distinct scheduled times.
    """
    if not records:
        return None
    times = [r.scheduled_t for r in records]
    first, span = min(times), max(times) - min(times)
    if span <= 0:
        return None
    return sum(1 for t in times if t > first) / span


def completion_slope(records: Sequence[RequestRecord]) -> float | None:
    """Least-squares slope of ``end_t`` against ``scheduled_t`` over successful requests.

    1 when latency from the schedule is stationary; above 1 when a queue (in the client or in the
    server) grows during the run. ``None`` with fewer than three successful requests.
    """
    ok = [r for r in records if r.ok]
    if len(ok) < 3:
        return None
    try:
        return statistics.linear_regression([r.scheduled_t for r in ok], [r.end_t for r in ok]).slope
    except statistics.StatisticsError:  # every request scheduled at one instant
        return None


def sustained_rate(records: Sequence[RequestRecord]) -> float | None:
    """The request rate the system kept up with: offered rate / completion slope (req/s).

    Unlike ``request_throughput``, it does not divide by a window that includes the last
    requests' latency, so a short unsaturated run is not biased low. When requests complete at
    capacity ``C`` below the offered rate ``λ``, request ``i`` ends near ``i / C`` while it was
    scheduled at ``i / λ``: the slope is ``λ / C`` and the sustained rate is ``C``.
    """
    offered, slope = offered_rate(records), completion_slope(records)
    if offered is None or slope is None or slope <= 0:
        return None
    return offered / max(slope, 1.0)


def summarize(records: Sequence[RequestRecord], slo: SLO | None = None) -> LoadSummary:
    """Aggregate a run's records into a :class:`LoadSummary` (warm-up records are excluded)."""
    slo = slo or SLO()
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    window = measured_window(measured)
    duration = window.duration if window is not None else 0.0
    out_tokens = sum(num_output_tokens(r) for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    good = sum(1 for r in ok if meets_slo(r, slo)) if slo.is_set() else None
    return LoadSummary(
        num_requests=len(measured),
        num_ok=len(ok),
        num_errors=len(measured) - len(ok),
        num_warmup=len(records) - len(measured),
        num_retried=sum(1 for r in measured if r.attempts > 1),
        duration_s=duration,
        request_throughput=_rate(len(ok), duration),
        offered_rate=offered_rate(measured),
        sustained_rate=sustained_rate(measured),
        output_throughput_tok_s=_rate(out_tokens, duration),
        input_throughput_tok_s=_rate(in_tokens, duration),
        total_prompt_tokens=in_tokens,
        total_output_tokens=out_tokens,
        ttft_ms=stats_ms(ttft(r) for r in ok),
        tpot_ms=stats_ms(tpot(r) for r in ok),
        itl_ms=stats_ms(x for r in ok for x in itl(r)),
        e2e_ms=stats_ms(e2e(r) for r in ok),
        e2e_sched_ms=stats_ms(e2e_from_schedule(r) for r in ok),
        queue_ms=stats_ms(queue_time(r) for r in measured),
        slo=slo,
        goodput=None if good is None else _rate(good, duration),
        goodput_fraction=None if good is None or not measured else good / len(measured),
        token_count_sources=dict(Counter(r.token_count_source for r in ok)),
        errors=dict(Counter(_short(r.error) for r in measured if r.error).most_common(10)),
        steady_state=steady_state(measured),
        prompt_tokens_check=prompt_token_check(measured),
    )


def _rate(count: float, duration: float) -> float:
    return count / duration if duration > 0 else 0.0


def _short(error: str | None) -> str:
    return (error or "")[:160]
