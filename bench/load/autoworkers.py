"""``--workers auto``: add client processes until the client keeps up with the target load.

A short probe at the target load (the same arrival and workload, :func:`probe_config`) runs with 1 worker,
then 2, 4, ... up to the core count (and never more workers than requests in flight). The first count whose
probe the client health check (:func:`bench.metrics.health.client_health`, the same verdict every summary
carries) does not flag as **behind** is chosen; when every probe lagged, the largest count is used and the
reason says so. Each probe is a normal ``bench load`` run in ``<out>/workers-probe-<n>``; the choice and why
go to ``<out>/workers_auto.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import Console

from bench.load.config import LoadConfig
from bench.load.repeats import RunOne
from bench.metrics import LoadSummary
from bench.metrics.health import CPU_BUSY_LIMIT

AUTO = "auto"
AUTO_FILE = "workers_auto.json"
# Requests per probe: enough lag samples for the verdict, a few seconds of load, far fewer than a real run.
PROBE_MIN_REQUESTS = 32
PROBE_REQUESTS_PER_SLOT = 4  # closed loop (or a capped open loop): requests per in-flight slot
PROBE_SECONDS = 5.0  # open loop: this long at the offered rate
PROBE_MAX_REQUESTS = 2048


class WorkersProbe(BaseModel):
    """One probe: how many workers, and what the client health check said."""

    workers: int
    behind: bool | None = Field(description="None: the probe recorded no client health")
    lag_p99_ms: float | None = None
    lag_limit_ms: float | None = None
    cpu_busy_max: float | None = None
    reasons: list[str] = Field(default_factory=list)


class AutoWorkers(BaseModel):
    """The chosen worker count, why, and every probe."""

    chosen: int
    why: str
    max_workers: int
    probes: list[WorkersProbe]


def probe_requests(cfg: LoadConfig) -> int:
    """Requests in one probe at ``cfg``'s load (never more than the run itself asks for)."""
    arrival = cfg.arrival
    slots = arrival.in_flight_limit
    rate = getattr(arrival, "rate", None)
    if slots is not None and (arrival.closed_loop or rate is None):
        n = PROBE_REQUESTS_PER_SLOT * slots
    elif rate is not None:
        n = int(rate * PROBE_SECONDS)
    else:
        n = PROBE_MIN_REQUESTS
    n = min(max(n, PROBE_MIN_REQUESTS), PROBE_MAX_REQUESTS)
    return min(n, cfg.num_requests) if cfg.num_requests is not None else n


def probe_config(cfg: LoadConfig, workers: int) -> LoadConfig:
    """The probe at ``cfg``'s load with ``workers`` processes: by count, no warm-up, no scraping."""
    return cfg.model_copy(update={"workers": workers, "num_requests": probe_requests(cfg), "duration_s": None,
                                  "warmup": 0, "scrape": False})  # fmt: skip


def worker_cap(cfg: LoadConfig, cores: int | None = None) -> int:
    """The most workers to try: the cores here, and no more than requests in flight (a worker needs one)."""
    cap = cores or os.cpu_count() or 1
    slots = cfg.arrival.in_flight_limit
    return max(1, min(cap, slots) if slots is not None else cap)


def probe_of(workers: int, summary: LoadSummary) -> WorkersProbe:
    """The probe's health figures (pure)."""
    h = summary.client
    if h is None:
        return WorkersProbe(workers=workers, behind=None)
    return WorkersProbe(workers=workers, behind=h.behind, lag_p99_ms=h.lag_p99_ms, lag_limit_ms=h.lag_limit_ms,
                        cpu_busy_max=h.cpu_busy_max, reasons=list(h.reasons))  # fmt: skip


def next_count(workers: int, cap: int) -> int | None:
    """Double, up to ``cap``; None when ``cap`` was tried."""
    return None if workers >= cap else min(2 * workers, cap)


def why(probe: WorkersProbe, cap: int) -> str:
    """One line: why this count (pure)."""
    if probe.behind is None:
        return f"{probe.workers}: the probe recorded no client health (no request completed?)"
    lag = f"event-loop lag p99 {probe.lag_p99_ms or 0:.2f} ms (bound {probe.lag_limit_ms or 0:.2f} ms)"
    if not probe.behind:
        return f"{probe.workers}: the first count whose client kept up at this load: {lag}"
    head = (f"{probe.workers}: the client still fell behind at the most workers tried ({cap}: cores, requests in "
            f"flight): {'; '.join(probe.reasons)}")  # fmt: skip
    busy = probe.cpu_busy_max
    if busy is not None and busy < CPU_BUSY_LIMIT:
        return head + (f"; its busiest worker was on the CPU {busy:.0%} of the time, so it waited for a core other "
                       "processes held: free cores for the client, not more workers")  # fmt: skip
    return head


def choose_workers(cfg: LoadConfig, out: Path, run_one: RunOne, console: Console | None = None,
                   cores: int | None = None) -> AutoWorkers:
    """Probe 1, 2, 4, ... workers at ``cfg``'s load; the first the client keeps up with (writes AUTO_FILE)."""
    out.mkdir(parents=True, exist_ok=True)
    cap = worker_cap(cfg, cores)
    probes: list[WorkersProbe] = []
    workers: int | None = 1
    while workers is not None:
        if console is not None:
            console.rule(f"--workers auto: probe with {workers} worker(s)")
        summary = run_one(probe_config(cfg, workers), out / f"workers-probe-{workers}", console)
        probes.append(probe_of(workers, summary))
        if probes[-1].behind is not True:
            break
        workers = next_count(workers, cap)
    result = AutoWorkers(chosen=probes[-1].workers, why=why(probes[-1], cap), max_workers=cap, probes=probes)
    (out / AUTO_FILE).write_text(result.model_dump_json(indent=2) + "\n")
    return result


def read_auto_workers(out: Path) -> AutoWorkers | None:
    """``workers_auto.json`` of a load folder, if ``--workers auto`` chose its count."""
    path = out / AUTO_FILE
    return AutoWorkers.model_validate(json.loads(path.read_text())) if path.exists() else None
