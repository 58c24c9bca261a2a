"""Client health: did the load client keep up with what it measured? (pure: no I/O, no clock)

- event-loop lag = how late the client's timer task woke past the time it asked for (per sample);
- CPU busy = a worker process's CPU time / its wall time over the run (1.0 = one core, fully used);
- the client fell **behind** when, over the measured window, more than 1% of the lag samples (and at least
  ``LAG_MIN_STALLS``) exceed ``LAG_ITL_FRACTION`` × the run's mean ITL (and ``LAG_FLOOR_MS``): the p99 lag
  is over the limit, counted so that one hiccup in a short run is not a verdict; or any worker was CPU busy
  at least ``CPU_BUSY_LIMIT`` of the time. See ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.load.health import WorkerHealth

# A stall of half a token gap in the client's loop moves the token timestamps it delays by half a gap: the
# worst 1% of ITL (and TPOT with it) then measure the client, not the server.
LAG_ITL_FRACTION = 0.5
# Below this the lag is the loop's own timer jitter, never a reason to flag a run (ms).
LAG_FLOOR_MS = 1.0
# Stalls past the limit needed for a verdict besides "more than 1% of samples" (a short run has few samples).
LAG_MIN_STALLS = 3
LAG_STALL_FRACTION = 0.01
# A worker that was on the CPU this fraction of its wall time had no spare cycles to read sockets on time.
CPU_BUSY_LIMIT = 0.9


class ClientHealth(BaseModel):
    """The client's lag and CPU use over a run, and whether it fell behind (``behind``)."""

    model_config = ConfigDict(frozen=True)

    workers: int
    lag_samples: int = 0
    lag_mean_ms: float | None = None
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    cpu_busy: list[float] = Field(default_factory=list, description="per worker: CPU time / wall time")
    lag_limit_ms: float | None = Field(default=None, description="lag above this is a stall")
    lag_stalls: int = Field(default=0, description="lag samples above lag_limit_ms")
    behind: bool = False
    reasons: list[str] = Field(default_factory=list)

    @property
    def cpu_busy_max(self) -> float | None:
        """The busiest worker's CPU fraction."""
        return max(self.cpu_busy) if self.cpu_busy else None


def lag_limit_ms(itl_mean_ms: float | None) -> float:
    """The p99 event-loop lag above which a run is flagged: ``LAG_ITL_FRACTION`` × mean ITL, at least the floor."""
    if itl_mean_ms is None:
        return LAG_FLOOR_MS
    return max(LAG_ITL_FRACTION * itl_mean_ms, LAG_FLOOR_MS)


def window_lags(workers: Sequence[WorkerHealth], window: tuple[float, float] | None) -> list[float]:
    """Lag samples (s) of every worker taken inside ``window`` (all of them without one)."""
    out: list[float] = []
    for w in workers:
        for t, lag in zip(w.lag_t, w.lag_s, strict=False):
            if window is None or window[0] <= t <= window[1]:
                out.append(lag)
    return out


def cpu_busy(w: WorkerHealth) -> float:
    """CPU time / wall time of one worker (0 for an empty run)."""
    return w.cpu_s / w.wall_s if w.wall_s > 0 else 0.0


def client_health(
    workers: Sequence[WorkerHealth], window: tuple[float, float] | None, itl_mean_ms: float | None
) -> ClientHealth | None:
    """Lag percentiles over the measured window, CPU per worker, and the verdict (None without samples)."""
    if not workers:
        return None
    lags = np.asarray(window_lags(workers, window), dtype=np.float64) * 1e3
    busy = [round(cpu_busy(w), 4) for w in sorted(workers, key=lambda w: w.worker)]
    limit = lag_limit_ms(itl_mean_ms)
    fields: dict[str, float | None] = {"lag_mean_ms": None, "lag_p50_ms": None, "lag_p99_ms": None, "lag_max_ms": None}
    if lags.size:
        p50, p99 = np.percentile(lags, (50, 99))
        fields = {"lag_mean_ms": float(lags.mean()), "lag_p50_ms": float(p50), "lag_p99_ms": float(p99),
                  "lag_max_ms": float(lags.max())}  # fmt: skip
    stalls = int((lags > limit).sum())
    reasons = behind_reasons(stalls, int(lags.size), fields["lag_p99_ms"], limit, busy)
    return ClientHealth(workers=len(workers), lag_samples=int(lags.size), cpu_busy=busy, lag_limit_ms=limit,
                        lag_stalls=stalls, behind=bool(reasons), reasons=reasons, **fields)  # fmt: skip


def too_many_stalls(stalls: int, samples: int) -> bool:
    """More than 1% of the samples, and at least ``LAG_MIN_STALLS``, lagged past the limit."""
    return stalls >= LAG_MIN_STALLS and stalls > LAG_STALL_FRACTION * samples


def behind_reasons(stalls: int, samples: int, lag_p99_ms: float | None, limit_ms: float,
                   busy: Sequence[float]) -> list[str]:
    """Why the client fell behind (empty: it kept up)."""
    reasons = []
    if too_many_stalls(stalls, samples):
        reasons.append(f"event-loop lag p99 {lag_p99_ms or 0:.1f} ms: {stalls} of {samples} samples > "
                       f"{limit_ms:.1f} ms ({LAG_ITL_FRACTION:g} x mean ITL)")  # fmt: skip
    hot = [i for i, b in enumerate(busy) if b >= CPU_BUSY_LIMIT]
    if hot:
        reasons.append(f"worker(s) {hot} on the CPU >= {CPU_BUSY_LIMIT:.0%} of the run")
    return reasons


# A multi-turn run whose client kept fewer than this share of the target sessions open fell behind.
SESSION_SHORTFALL = 0.95


def sessions_behind_reason(achieved: float | None, target: int | None) -> str | None:
    """Why a multi-turn client fell behind: it kept fewer sessions open than asked (None: it kept up)."""
    if achieved is None or not target or achieved >= SESSION_SHORTFALL * target:
        return None
    return f"{achieved:.1f} of {target} target sessions open on average (< {SESSION_SHORTFALL:.0%})"


def with_reason(health: ClientHealth | None, reason: str | None) -> ClientHealth | None:
    """``health`` with one more reason it fell behind (unchanged without one)."""
    if health is None or reason is None:
        return health
    return health.model_copy(update={"behind": True, "reasons": [*health.reasons, reason]})


def behind_advice(health: ClientHealth) -> str:
    """One line for the summary: what fell behind and what to do about it.

    A worker on the CPU ``CPU_BUSY_LIMIT`` of the time was busy with its own work: more worker processes help.
    A lagging worker that was on the CPU less than that either did its work in bursts or waited for a core
    the host gave to other processes (the server on the same host, other jobs), where more workers would not
    help: the line says both.
    """
    head = f"client fell behind ({'; '.join(health.reasons)}): its timings include its own lag; "
    more = f"rerun with more client processes (--workers {2 * health.workers})"
    busy = health.cpu_busy_max
    if busy is None or busy >= CPU_BUSY_LIMIT:
        return head + more
    return head + (f"its busiest worker was on the CPU {busy:.0%} of the time: with free cores, {more}; "
                   "without, it waited for a core other processes held, so free cores for it")  # fmt: skip
