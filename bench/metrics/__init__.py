"""The one home of servebench's metrics: pure functions, no I/O, no clock, no printing.

- :mod:`bench.metrics.client`: request records → latency, throughput, goodput (and the measured window);
- :mod:`bench.metrics.health`: the client's own event-loop lag and CPU use → did it keep up;
- :mod:`bench.metrics.server`: scrape rows → server-side figures (KV cache, prefix cache, speculative
  acceptance, GPU memory and energy, MBU) over that same window.

Each metric is defined once, here and in ``docs/metrics.md``. The client-side names are re-exported.
"""

from bench.metrics.client import (
    GOODPUT_TARGET,
    PERCENTILES,
    SLO,
    LoadSummary,
    Stats,
    Window,
    completion_slope,
    e2e,
    e2e_from_schedule,
    itl,
    measured_window,
    meets_slo,
    num_output_tokens,
    offered_rate,
    queue_time,
    stats_ms,
    summarize,
    sustained_rate,
    tpot,
    ttft,
)
from bench.metrics.health import ClientHealth, client_health

__all__ = [
    "GOODPUT_TARGET",
    "PERCENTILES",
    "SLO",
    "ClientHealth",
    "LoadSummary",
    "Stats",
    "Window",
    "client_health",
    "completion_slope",
    "e2e",
    "e2e_from_schedule",
    "itl",
    "measured_window",
    "meets_slo",
    "num_output_tokens",
    "offered_rate",
    "queue_time",
    "stats_ms",
    "summarize",
    "sustained_rate",
    "tpot",
    "ttft",
]
