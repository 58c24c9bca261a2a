"""Pure server-side figures over scrape rows (no I/O): what ``bench.scrape`` sampled, summarised.

Rows are :class:`ScrapeRow` (``server_metrics.jsonl``: ``{"t": ..., "values": {name: value}}``) and
:class:`GpuRow` (``gpu.jsonl``: one per GPU per sample); the sampler writes them and every reader validates
them. Every figure covers the one measured window of :func:`bench.metrics.client.measured_window`: pass the rows
through :func:`window_rows` / :func:`window_gpu_rows` first. Metric names understood:

- vLLM (and servebench's server, which reuses vLLM's names): ``vllm:kv_cache_usage_perc``
  (older ``vllm:gpu_cache_usage_perc``), ``vllm:prefix_cache_queries_total`` /
  ``vllm:prefix_cache_hits_total``, ``vllm:spec_decode_num_drafts_total`` /
  ``..._num_draft_tokens_total`` / ``..._num_accepted_tokens_total``, ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:generation_tokens_total``;
- llama-server: ``llamacpp:kv_cache_usage_ratio``, ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred``, ``llamacpp:tokens_predicted_total``, ``llamacpp:prompt_tokens_total`` /
  ``llamacpp:prompt_tokens_cached_total`` and the ``llamacpp:spec_decode_*`` counters.
"""

from __future__ import annotations

import itertools
from collections.abc import ItemsView, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from bench.load.records import RequestRecord

if TYPE_CHECKING:  # client.py imports ServerFigures from here for LoadSummary
    from bench.metrics.client import Window


class ScrapeRow(BaseModel):
    """One sample of the server's ``/metrics`` (a line of ``server_metrics.jsonl``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float = Field(description="the records' clock (seconds)")
    values: dict[str, float] = Field(description="each sample name summed over its label sets; buckets dropped")
    mark: str | None = Field(default=None, description="a sample taken at once and labelled, e.g. the warm-up "
                             "boundary")


class GpuRow(BaseModel):
    """One GPU at one sample time, from NVML (a line of ``gpu.jsonl``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float
    gpu: int = Field(description="NVML index")
    name: str
    mem_used_bytes: int
    power_w: float
    energy_j: float | None = Field(default=None, description="NVML's energy counter; None: not supported")
    mark: str | None = None


Row = TypeVar("Row", ScrapeRow, GpuRow)


class ServerFigures(BaseModel):
    """The server-side figures of one load run over its measured window (``LoadSummary.server``).

    A figure the server or the machine did not give is None and is left out of ``summary.json`` (only the
    figures set are written). Extra keys are kept, so a record a later version added a figure to still reads.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kv_cache_usage_peak: float | None = None
    requests_running_peak: float | None = None
    requests_waiting_peak: float | None = None
    prefix_cache_hit_rate: float | None = Field(default=None, description="prompt tokens served from the cache")
    spec_acceptance_rate: float | None = Field(default=None, description="accepted / drafted tokens")
    spec_acceptance_length: float | None = Field(default=None, description="1 + accepted tokens / drafts")
    spec_draft_tokens: float | None = None
    spec_accepted_tokens: float | None = None
    server_generation_tokens: float | None = None
    server_ttft_mean_ms: float | None = None
    server_itl_mean_ms: float | None = None
    server_tpot_mean_ms: float | None = None
    server_e2e_mean_ms: float | None = None
    server_queue_mean_ms: float | None = None
    gpu_mem_peak_gib: float | None = None
    gpu_energy_j: float | None = None
    joules_per_output_token: float | None = None
    mbu: float | None = Field(default=None, description="model bandwidth utilisation")
    ttft_gap_ms: float | None = Field(default=None, description="client mean TTFT − the server's own")
    itl_gap_ms: float | None = None
    tpot_gap_ms: float | None = None

    @model_serializer(mode="wrap")
    def _measured_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        declared = type(self).model_fields
        return {k: v for k, v in data.items() if k in self.model_fields_set or k not in declared}

    def figures(self) -> dict[str, float | None]:
        """The figures that were measured (or given), by name: what ``summary.json`` holds."""
        return dict(self.model_dump())

    # Read by name for callers that list the figures (bench load's table) or name one in a test; the report
    # reads them as attributes.
    def get(self, name: str, default: float | None = None) -> float | None:
        """A figure by name (``default`` when not measured)."""
        return self.figures().get(name, default)

    def __getitem__(self, name: str) -> float | None:
        return self.figures()[name]

    def __contains__(self, name: object) -> bool:
        return name in self.figures()

    def items(self) -> ItemsView[str, float | None]:
        """(name, value) of each figure measured."""
        return self.figures().items()

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
GEN_TOKENS = ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total")
PREFIX_QUERIES, PREFIX_HITS = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
LLAMA_PROMPT, LLAMA_CACHED = "llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"
SPEC_DRAFTS = ("vllm:spec_decode_num_drafts_total", "llamacpp:spec_decode_num_drafts_total")
SPEC_DRAFT_TOKENS = ("vllm:spec_decode_num_draft_tokens_total", "llamacpp:spec_decode_num_draft_tokens_total")
SPEC_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens_total", "llamacpp:spec_decode_num_accepted_tokens_total")

# The server's own latency histograms (seconds), by figure: vLLM's names (servebench's server uses them too).
# Their mean over the window is Δ<name>_sum / Δ<name>_count.
LATENCY_HISTOGRAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("server_ttft_mean_ms", ("vllm:time_to_first_token_seconds",)),
    ("server_itl_mean_ms", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
    ("server_tpot_mean_ms", ("vllm:request_time_per_output_token_seconds",)),
    ("server_e2e_mean_ms", ("vllm:e2e_request_latency_seconds",)),
    ("server_queue_mean_ms", ("vllm:request_queue_time_seconds",)),
)
# Client figure (ms) minus the server's own: the time between the engine and the client's socket.
GAPS: tuple[tuple[str, str, str], ...] = (
    ("ttft_gap_ms", "ttft", "server_ttft_mean_ms"),
    ("itl_gap_ms", "itl", "server_itl_mean_ms"),
    ("tpot_gap_ms", "tpot", "server_tpot_mean_ms"),
)

# Peak DRAM bandwidth in GB/s by a substring of the NVML device name (first match wins).
PEAK_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("GH200", 4000.0),  # before H200, which its name contains
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("V100", 900.0),
    ("T4", 320.0),
)


def parse_prometheus(text: str) -> dict[str, float]:
    """Flatten Prometheus text: each sample name summed over its label sets; buckets dropped."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" in sample.labels or "quantile" in sample.labels:
                continue
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


# ---- the window --------------------------------------------------------------------------------


def window_rows(rows: Sequence[Row], start: float, end: float) -> list[Row]:
    """The rows of one series that cover ``[start, end]``: the last sample at or before ``start`` (the
    counters' baseline), every sample inside, and the first at or after ``end``.

    Counter deltas over these rows count what the server did in the window plus the gaps to the
    bracketing samples; the runner takes a sample right before the first measured request is sent, so
    that the baseline falls on the warm-up boundary.
    """
    ordered = sorted(rows, key=lambda r: r.t)
    before = [r for r in ordered if r.t <= start]
    inside = [r for r in ordered if start < r.t < end]
    after = [r for r in ordered if r.t >= end and r.t > start]
    return before[-1:] + inside + after[:1]


def window_gpu_rows(rows: Sequence[GpuRow], start: float, end: float) -> list[GpuRow]:
    """:func:`window_rows` of each GPU's series (``gpu.jsonl`` has one row per GPU per sample)."""
    return [r for gpu in sorted({r.gpu for r in rows})
            for r in window_rows([x for x in rows if x.gpu == gpu], start, end)]


def tokens_in_window(records: Sequence[RequestRecord], window: Window) -> int:
    """Output tokens that arrived inside ``window``, warm-up requests included: what the GPU's energy over
    the window was spent on."""
    start, end = window
    return sum(1 for r in records for t in r.token_times if start <= t <= end)


# ---- counters ----------------------------------------------------------------------------------


def counter_delta(rows: Sequence[ScrapeRow], name: str) -> float | None:
    """A counter's last − first value over scrape rows (None with fewer than two samples of it)."""
    seen = [r.values[name] for r in rows if name in r.values]
    return seen[-1] - seen[0] if len(seen) >= 2 else None


def first_counter_delta(rows: Sequence[ScrapeRow], names: Sequence[str]) -> float | None:
    """:func:`counter_delta` of the first of ``names`` (one counter under each engine's name) that has one."""
    return next((d for name in names if (d := counter_delta(rows, name)) is not None), None)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def prefix_hit_rate(rows: Sequence[ScrapeRow]) -> float | None:
    """Prompt tokens served from the prefix cache / prompt tokens, over the rows' window."""
    rate = _ratio(counter_delta(rows, PREFIX_HITS), counter_delta(rows, PREFIX_QUERIES))
    if rate is not None:
        return rate
    cached = counter_delta(rows, LLAMA_CACHED)
    processed = counter_delta(rows, LLAMA_PROMPT)  # excludes cached tokens
    if cached is not None and processed is not None and cached + processed > 0:
        return cached / (cached + processed)
    return None


def speculative_figures(rows: Sequence[ScrapeRow]) -> dict[str, float | None]:
    """Acceptance rate (accepted / drafted tokens) and mean acceptance length (1 + accepted / drafts)."""
    drafted = first_counter_delta(rows, SPEC_DRAFT_TOKENS)
    accepted = first_counter_delta(rows, SPEC_ACCEPTED)
    length = _ratio(accepted, first_counter_delta(rows, SPEC_DRAFTS))
    return {"spec_acceptance_rate": _ratio(accepted, drafted),
            "spec_acceptance_length": None if length is None else 1.0 + length,
            "spec_draft_tokens": drafted, "spec_accepted_tokens": accepted}


def histogram_mean(rows: Sequence[ScrapeRow], name: str) -> float | None:
    """A histogram's mean over the rows' window: Δ``name_sum`` / Δ``name_count`` (None without observations)."""
    return _ratio(counter_delta(rows, name + "_sum"), counter_delta(rows, name + "_count"))


def server_latencies(rows: Sequence[ScrapeRow]) -> dict[str, float | None]:
    """The server's own mean TTFT, ITL, TPOT, E2E and queue time (ms) over the rows' window."""
    out: dict[str, float | None] = {}
    for key, names in LATENCY_HISTOGRAMS:
        mean = next((m for name in names if (m := histogram_mean(rows, name)) is not None), None)
        out[key] = None if mean is None else mean * 1e3
    return out


def latency_gaps(figures: dict[str, float | None], client_ms: dict[str, float | None]) -> dict[str, float | None]:
    """Client mean − server mean per figure (ms): what the HTTP frontend, the network and the client added."""
    out: dict[str, float | None] = {}
    for key, client_key, server_key in GAPS:
        client, server = client_ms.get(client_key), figures.get(server_key)
        out[key] = None if client is None or server is None else client - server
    return out


def summarize_server(rows: Sequence[ScrapeRow]) -> dict[str, float | None]:
    """Peaks and rates over the rows given (counters as last − first); pass :func:`window_rows` of the
    measured window so that warm-up requests are left out."""

    def peak(names: Sequence[str]) -> float | None:
        vals = [v for r in rows if (v := _first(r.values, names)) is not None]
        return max(vals) if vals else None

    return {
        "kv_cache_usage_peak": peak(KV_USAGE),
        "requests_running_peak": peak(RUNNING),
        "requests_waiting_peak": peak(WAITING),
        "prefix_cache_hit_rate": prefix_hit_rate(rows),
        **speculative_figures(rows),
        "server_generation_tokens": first_counter_delta(rows, GEN_TOKENS),
        **server_latencies(rows),
    }


def _first(values: dict[str, float], names: Sequence[str]) -> float | None:
    return next((values[name] for name in names if name in values), None)


# ---- GPU ---------------------------------------------------------------------------------------


def peak_bandwidth_gbs(gpu_name: str) -> float | None:
    """Peak memory bandwidth of a GPU from :data:`PEAK_BANDWIDTH_GBS` (None if unknown)."""
    return next((bw for key, bw in PEAK_BANDWIDTH_GBS if key.lower() in gpu_name.lower()), None)


def summarize_gpu(rows: Sequence[GpuRow], output_tokens: int) -> dict[str, float | None]:
    """GPU memory peak (GiB, summed over GPUs per sample time) and joules per output token."""
    if not rows:
        return {}
    by_t: dict[float, float] = {}
    for r in rows:
        by_t[r.t] = by_t.get(r.t, 0.0) + r.mem_used_bytes
    energy = sum(_gpu_energy([r for r in rows if r.gpu == gpu]) for gpu in {r.gpu for r in rows})
    return {
        "gpu_mem_peak_gib": max(by_t.values()) / 2**30,
        "gpu_energy_j": energy,
        "joules_per_output_token": energy / output_tokens if output_tokens else None,
    }


def _gpu_energy(rows: Sequence[GpuRow]) -> float:
    """Energy counter delta when NVML has one, else the power integral (trapezoid)."""
    counters = [r.energy_j for r in rows if r.energy_j is not None]
    if len(counters) >= 2:
        return float(counters[-1] - counters[0])
    return float(sum((b.t - a.t) * (a.power_w + b.power_w) / 2 for a, b in itertools.pairwise(rows)))


def mbu(model_bytes: int | None, tpot_mean_s: float | None, peak_gbs: float | None) -> float | None:
    """Model bandwidth utilisation: weights read per decode step × steps per second / peak bandwidth.

    One decode step reads every weight once, and a running request advances one token per step, so
    steps/s ≈ 1 / mean TPOT. KV-cache reads are not counted (a lower bound).
    """
    if not model_bytes or not tpot_mean_s or not peak_gbs:
        return None
    return model_bytes / tpot_mean_s / (peak_gbs * 1e9)


# ---- everything over one window ----------------------------------------------------------------


def server_figures(
    server_rows: Sequence[ScrapeRow],
    gpu_rows: Sequence[GpuRow],
    records: Sequence[RequestRecord],
    window: Window | None,
    *,
    output_tokens: int,
    tpot_mean_ms: float | None,
    model_bytes: int | None = None,
    peak_gbs: float | None = None,
    gpus: int = 1,
    client_ms: dict[str, float | None] | None = None,
) -> ServerFigures:
    """Every server-side figure over the measured ``window`` (all rows when None); Nones dropped.

    ``client_ms`` (the client's mean ``ttft``, ``itl``, ``tpot`` in ms) gives the gaps to the server's own.

    ``peak_gbs`` is one GPU's bandwidth (looked up by the first GPU row's name when not given); the model
    is split over ``gpus`` of them. ``output_tokens`` is used only when there is no window.
    """
    if window is not None:
        server_rows, gpu_rows = window_rows(server_rows, *window), window_gpu_rows(gpu_rows, *window)
        output_tokens = tokens_in_window(records, window)
    figures = summarize_server(server_rows)
    figures.update(summarize_gpu(gpu_rows, output_tokens))
    if peak_gbs is None and gpu_rows:
        peak_gbs = peak_bandwidth_gbs(gpu_rows[0].name)
    tpot_mean = tpot_mean_ms / 1e3 if tpot_mean_ms else None
    figures["mbu"] = mbu(model_bytes, tpot_mean, peak_gbs * gpus if peak_gbs else None)
    figures.update(latency_gaps(figures, {"tpot": tpot_mean_ms, **(client_ms or {})}))
    return ServerFigures.model_validate({k: v for k, v in figures.items() if v is not None})
