"""Prometheus metrics with vLLM's names where the meaning is the same; one registry per app."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.base import EngineStats

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class _StatsCollector(Collector):
    """Gauges read from the engine and the admission bound at scrape time, so they are never stale."""

    def __init__(self, model: str, stats: Callable[[], EngineStats], inflight: Callable[[], int],
                 rejected: Callable[[], int]) -> None:
        self._model = model
        self._stats = stats
        self._inflight = inflight
        self._rejected = rejected

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self._stats()
        labels = ["model_name"]
        gauges: list[tuple[str, str, float | None]] = [
            ("vllm:num_requests_running", "Requests in the engine's running batch.", snap.running),
            ("vllm:num_requests_waiting", "Requests waiting for a batch slot.", snap.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.", snap.kv_cache_usage),
            ("servebench:requests_in_flight", "Requests admitted by the HTTP server.", self._inflight()),
            ("servebench:kv_cache_capacity_tokens", "Tokens the KV cache can hold.", snap.kv_capacity_tokens),
        ]
        for name, doc, value in gauges:
            if value is None:  # the engine has no such figure: leave the gauge out rather than invent one
                continue
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric([self._model], float(value))
            yield family
        rejected = CounterMetricFamily("servebench:requests_rejected",
                                       "Requests refused with 429 because the server was at capacity.",
                                       labels=labels)
        rejected.add_metric([self._model], float(self._rejected()))
        yield rejected


class ServerMetrics:
    """The server's metrics; create one per app (no process-wide registry)."""

    def __init__(self, model: str, stats: Callable[[], EngineStats], inflight: Callable[[], int],
                 rejected: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model = model
        labels = ["model_name"]
        reg = self.registry
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=_LATENCY_BUCKETS, registry=reg)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Gap between output tokens.", labels,
                             buckets=_ITL_BUCKETS, registry=reg)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Mean time per output token after the first, per request.", labels,
                              buckets=_ITL_BUCKETS, registry=reg)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=_LATENCY_BUCKETS, registry=reg)
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Time from the request's arrival to the engine's scheduler starting it.", labels,
                               buckets=_LATENCY_BUCKETS, registry=reg)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=reg)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels, registry=reg)
        self.success = Counter("vllm:request_success", "Finished requests by reason.",
                               [*labels, "finished_reason"], registry=reg)
        for family in (self.ttft, self.itl, self.tpot, self.e2e, self.queue, self.prompt_tokens,
                       self.generation_tokens):
            family.labels(model)  # exported at zero from the start, so a scrape's first sample is a baseline
        reg.register(_StatsCollector(model, stats, inflight, rejected))

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def observe_request(self, token_times: list[float], start: float, end: float, prompt: int,
                        reason: str, started: float | None = None) -> None:
        """Record one finished request from its token arrival times (server clock).

        ``started``: when the engine's scheduler started it (None: the engine does not say, and no queue time
        is recorded rather than one made up).
        """
        m = self.model
        self.prompt_tokens.labels(m).inc(prompt)
        self.generation_tokens.labels(m).inc(len(token_times))
        self.e2e.labels(m).observe(end - start)
        self.success.labels(m, reason).inc()
        if started is not None:
            self.queue.labels(m).observe(max(started - start, 0.0))
        if not token_times:
            return
        self.ttft.labels(m).observe(token_times[0] - start)
        for prev, cur in itertools.pairwise(token_times):
            self.itl.labels(m).observe(cur - prev)
        if len(token_times) > 1:
            self.tpot.labels(m).observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
