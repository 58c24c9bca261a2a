"""The load client watching itself: event-loop lag and CPU use of each client process (sampling only).

A timer task asks to wake every ``interval_s`` and records how late it woke (the event-loop lag: the time a
ready socket or timer waited for the loop). The process's CPU time over the run says how busy the worker
was. Each worker appends one :class:`WorkerHealth` line to ``client_health.jsonl``; the figures and the
"client fell behind" verdict are pure functions in :mod:`bench.metrics.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HEALTH_FILE = "client_health.jsonl"
# Timer period of the lag sampler: 100 wake-ups a second cost nothing next to a request's parsing.
LAG_INTERVAL_S = 0.01


@dataclass(frozen=True)
class WorkerHealth:
    """What one client process saw of itself: lag samples (time, lateness in s) and its CPU time."""

    worker: int
    lag_t: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, times to the microsecond (a long run has many samples)."""
        d = asdict(self)
        d["lag_t"] = [round(t, 6) for t in self.lag_t]
        d["lag_s"] = [round(x, 6) for x in self.lag_s]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerHealth:
        """From :meth:`to_dict`'s output."""
        return cls(int(d["worker"]), list(d["lag_t"]), list(d["lag_s"]), float(d["cpu_s"]), float(d["wall_s"]))


@dataclass
class LagSampler:
    """Collects event-loop lag on ``now`` (the executor's clock) until stopped."""

    now: Callable[[], float]
    interval_s: float = LAG_INTERVAL_S
    times: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Wake every ``interval_s``; each wake records its lateness past the asked-for time."""
        while not stop.is_set():
            due = self.now() + self.interval_s
            await asyncio.sleep(self.interval_s)
            woke = self.now()
            self.times.append(woke)
            self.lags.append(max(woke - due, 0.0))


@contextlib.asynccontextmanager
async def watch_client(worker: int, now: Callable[[], float], path: Path | None) -> AsyncIterator[LagSampler]:
    """Sample lag and CPU while the body runs; append the worker's :class:`WorkerHealth` to ``path``."""
    sampler = LagSampler(now)
    stop = asyncio.Event()
    task = asyncio.create_task(sampler.run(stop))
    cpu0, wall0 = time.process_time(), now()
    try:
        yield sampler
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        health = WorkerHealth(worker, sampler.times, sampler.lags, time.process_time() - cpu0, now() - wall0)
        if path is not None:
            append_health(path, health)


def append_health(path: Path, health: WorkerHealth) -> None:
    """One line per worker, in one unbuffered ``O_APPEND`` write, so concurrent workers' lines stay whole."""
    with path.open("ab", buffering=0) as fh:
        fh.write((json.dumps(health.to_dict()) + "\n").encode())


def read_health(path: Path) -> list[WorkerHealth]:
    """Every worker's line (none when the file is missing; a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append(WorkerHealth.from_dict(json.loads(line)))
    return out
