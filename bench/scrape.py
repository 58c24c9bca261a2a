"""Sample the server's ``/metrics`` and NVML beside the records, on the records' clock.

Rows go to ``server_metrics.jsonl`` (``{"t": ..., "values": {name: value}}``, label sets summed,
histogram buckets dropped) and ``gpu.jsonl`` (one row per GPU per sample). The functions that turn
rows into summary figures are pure. Metric names understood:

- vLLM (and servebench's server, which reuses vLLM's names): ``vllm:kv_cache_usage_perc``
  (older ``vllm:gpu_cache_usage_perc``), ``vllm:prefix_cache_queries_total`` /
  ``vllm:prefix_cache_hits_total``, ``vllm:spec_decode_num_drafts_total`` /
  ``..._num_draft_tokens_total`` / ``..._num_accepted_tokens_total``, ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:generation_tokens_total``;
- llama-server: ``llamacpp:kv_cache_usage_ratio``, ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred``, ``llamacpp:tokens_predicted_total``.

NVML (``pynvml``, from ``nvidia-ml-py``: ``pip install -e '.[gpu]'``) gives memory, power and the
energy counter. Without a GPU the GPU part is skipped quietly; with one visible (the driver's
``/dev/nvidiactl``) but NVML failing to load, it is skipped with a warning, since ``gpu.jsonl`` then
stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backends.gpu import NVIDIA_DRIVER_FILES, nvidia_driver_file

log = logging.getLogger(__name__)

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
GEN_TOKENS = ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total")
PREFIX_QUERIES, PREFIX_HITS = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
SPEC_DRAFTS = "vllm:spec_decode_num_drafts_total"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"

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


# ---- pure parsing and summarising -------------------------------------------------------------


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


def _first(values: dict[str, float], names: Sequence[str]) -> float | None:
    for name in names:
        if name in values:
            return values[name]
    return None


def counter_delta(rows: Sequence[dict[str, Any]], name: str) -> float | None:
    """A counter's last − first value over scrape rows (None with fewer than two samples of it)."""
    seen = [r["values"][name] for r in rows if name in r.get("values", {})]
    return seen[-1] - seen[0] if len(seen) >= 2 else None


def first_counter_delta(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> float | None:
    """:func:`counter_delta` of the first of ``names`` (one counter under each engine's name) that has one."""
    return next((d for name in names if (d := counter_delta(rows, name)) is not None), None)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def summarize_server(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Peaks and rates over the rows given (counters as last − first); pass :func:`window_rows` of the
    measured window so that warm-up requests are left out."""

    def peak(names: Sequence[str]) -> float | None:
        vals = [v for r in rows if (v := _first(r["values"], names)) is not None]
        return max(vals) if vals else None

    drafts = counter_delta(rows, SPEC_DRAFTS)
    accepted = counter_delta(rows, SPEC_ACCEPTED)
    return {
        "kv_cache_usage_peak": peak(KV_USAGE),
        "requests_running_peak": peak(RUNNING),
        "requests_waiting_peak": peak(WAITING),
        "prefix_cache_hit_rate": _ratio(counter_delta(rows, PREFIX_HITS), counter_delta(rows, PREFIX_QUERIES)),
        "spec_acceptance_rate": _ratio(accepted, counter_delta(rows, SPEC_DRAFT_TOKENS)),
        "spec_acceptance_length": None if (r := _ratio(accepted, drafts)) is None else 1.0 + r,
        "server_generation_tokens": first_counter_delta(rows, GEN_TOKENS),
    }


def window_rows(rows: Sequence[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The rows of one series that cover ``[start, end]``: the last sample at or before ``start`` (the
    counters' baseline), every sample inside, and the first at or after ``end``.

    Counter deltas over these rows count what the server did in the window plus the gaps to the
    bracketing samples; the runner takes a sample right before the first measured request is sent, so
    that the baseline falls on the warm-up boundary.
    """
    ordered = sorted(rows, key=lambda r: r["t"])
    before = [r for r in ordered if r["t"] <= start]
    inside = [r for r in ordered if start < r["t"] < end]
    after = [r for r in ordered if r["t"] >= end and r["t"] > start]
    return before[-1:] + inside + after[:1]


def window_gpu_rows(rows: Sequence[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """:func:`window_rows` of each GPU's series (``gpu.jsonl`` has one row per GPU per sample)."""
    return [r for gpu in sorted({r["gpu"] for r in rows})
            for r in window_rows([x for x in rows if x["gpu"] == gpu], start, end)]


def peak_bandwidth_gbs(gpu_name: str) -> float | None:
    """Peak memory bandwidth of a GPU from :data:`PEAK_BANDWIDTH_GBS` (None if unknown)."""
    for key, bw in PEAK_BANDWIDTH_GBS:
        if key.lower() in gpu_name.lower():
            return bw
    return None


def summarize_gpu(rows: Sequence[dict[str, Any]], output_tokens: int) -> dict[str, float | None]:
    """GPU memory peak (GiB, summed over GPUs per sample time) and joules per output token."""
    if not rows:
        return {}
    by_t: dict[float, float] = {}
    for r in rows:
        by_t[r["t"]] = by_t.get(r["t"], 0.0) + r["mem_used_bytes"]
    energy = 0.0
    for gpu in {r["gpu"] for r in rows}:
        mine = [r for r in rows if r["gpu"] == gpu]
        energy += _gpu_energy(mine)
    return {
        "gpu_mem_peak_gib": max(by_t.values()) / 2**30,
        "gpu_energy_j": energy,
        "joules_per_output_token": energy / output_tokens if output_tokens else None,
    }


def _gpu_energy(rows: Sequence[dict[str, Any]]) -> float:
    """Energy counter delta when NVML has one, else the power integral (trapezoid)."""
    counters = [r["energy_j"] for r in rows if r.get("energy_j") is not None]
    if len(counters) >= 2:
        return float(counters[-1] - counters[0])
    total = 0.0
    for a, b in itertools.pairwise(rows):
        total += (b["t"] - a["t"]) * (a["power_w"] + b["power_w"]) / 2
    return total


def mbu(model_bytes: int | None, tpot_mean_s: float | None, peak_gbs: float | None) -> float | None:
    """Model bandwidth utilisation: weights read per decode step × steps per second / peak bandwidth.

    One decode step reads every weight once, and a running request advances one token per step, so
    steps/s ≈ 1 / mean TPOT. KV-cache reads are not counted (a lower bound).
    """
    if not model_bytes or not tpot_mean_s or not peak_gbs:
        return None
    return model_bytes / tpot_mean_s / (peak_gbs * 1e9)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a scrape JSONL file (a truncated last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def model_bytes_of(model: str) -> int | None:
    """Size of a models.yaml checkpoint's weight files (best effort; None when unknown)."""
    try:
        from bench.models.registry import load_registry

        path = load_registry().path_of(model)
    except Exception:
        return None
    if path.is_file():
        return path.stat().st_size
    files = [p for ext in ("*.safetensors", "*.gguf", "*.bin") for p in path.glob(ext)]
    return sum(p.stat().st_size for p in files) or None


# ---- sampling (I/O) ---------------------------------------------------------------------------


# Files the NVIDIA driver creates: when one exists, a GPU is there for NVML to read.
NVIDIA_DEVICE_NODES = NVIDIA_DRIVER_FILES


def cuda_device_visible(nodes: Sequence[Path] = NVIDIA_DEVICE_NODES) -> Path | None:
    """The first NVIDIA driver file that exists (the evidence a log line can name), or ``None`` (no GPU here).

    ``CUDA_VISIBLE_DEVICES`` does not matter here: NVML sees every GPU whatever CUDA is told.
    """
    return nvidia_driver_file(nodes)


class _Nvml:
    """Thin NVML reader; ``available`` is False without pynvml or a GPU.

    ``device_nodes`` are the files whose presence means a GPU is visible, so that NVML failing to
    load is worth a warning rather than a debug line.
    """

    def __init__(self, device_nodes: Sequence[Path] = NVIDIA_DEVICE_NODES) -> None:
        self.handles: list[Any] = []
        self.names: list[str] = []
        try:
            self._open()
        except Exception as exc:  # no pynvml, no driver, no GPU: skip the GPU part
            self.handles, self.names = [], []
            _report_no_nvml(exc, cuda_device_visible(device_nodes))

    def _open(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nv = pynvml
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            self.handles.append(h)
            name = pynvml.nvmlDeviceGetName(h)
            self.names.append(name.decode() if isinstance(name, bytes) else str(name))

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def sample(self, t: float) -> list[dict[str, Any]]:
        rows = []
        for i, h in enumerate(self.handles):
            energy: float | None
            try:
                energy = self._nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
            except Exception:
                energy = None
            rows.append(
                {
                    "t": t,
                    "gpu": i,
                    "name": self.names[i],
                    "mem_used_bytes": self._nv.nvmlDeviceGetMemoryInfo(h).used,
                    "power_w": self._nv.nvmlDeviceGetPowerUsage(h) / 1e3,
                    "energy_j": energy,
                }
            )
        return rows


def _report_no_nvml(exc: Exception, device: Path | None) -> None:
    if device is None:
        log.debug("NVML unavailable (no GPU visible): %s", exc)
        return
    log.warning(
        "a GPU is visible (%s) but NVML did not load (%s: %s), so gpu.jsonl stays empty; "
        "install nvidia-ml-py (pip install -e '.[gpu]')",
        device, type(exc).__name__, exc,
    )  # fmt: skip


class Scraper:
    """Polls ``metrics_url`` and NVML every ``interval_s`` until stopped, writing JSONL rows.

    A run starts the files afresh (like ``requests.jsonl``), so a folder run twice holds one run's rows.
    :meth:`mark` takes an extra sample at once, labelled, e.g. at the warm-up boundary.
    """

    def __init__(self, metrics_url: str, out_dir: Path, interval_s: float, now: Callable[[], float]) -> None:
        self.metrics_url = metrics_url
        self.server_path = out_dir / "server_metrics.jsonl"
        self.gpu_path = out_dir / "gpu.jsonl"
        self.interval_s = interval_s
        self.now = now
        self.gpu_names: list[str] = []
        self.metrics_ok = True
        self._live: tuple[Any, _Nvml, int, int] | None = None  # session, NVML, fds while running
        import prometheus_client.parser  # noqa: F401  (imported now, not on the first sample)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set, then take one last sample."""
        import aiohttp

        nvml = _Nvml()
        self.gpu_names = nvml.names
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s * 4, 2.0))
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as session:
            with _open_fresh(self.server_path) as sfd, _open_fresh(self.gpu_path) as gfd:
                self._live = (session, nvml, sfd, gfd)
                try:
                    while True:
                        await self._sample(session, nvml, sfd, gfd)
                        if stop.is_set():
                            return
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
                finally:
                    self._live = None

    async def mark(self, label: str) -> None:
        """Take a sample now, its rows tagged ``"mark": label``; returns once they are written (no-op when
        the scraper is not running)."""
        if self._live is not None:
            await self._sample(*self._live, mark=label)

    async def _sample(self, session: Any, nvml: _Nvml, sfd: int, gfd: int, mark: str | None = None) -> None:
        tag = {} if mark is None else {"mark": mark}
        if self.metrics_ok:
            try:
                async with session.get(self.metrics_url) as resp:
                    if resp.status == 404:
                        self.metrics_ok = False  # e.g. llama_cpp.server: no /metrics
                        return
                    text = await resp.text()
                row = {"t": self.now(), "values": parse_prometheus(text), **tag}
                os.write(sfd, (json.dumps(row) + "\n").encode())
            except Exception as exc:
                log.debug("scrape %s failed: %s", self.metrics_url, exc)
        if nvml.available:
            for row in nvml.sample(self.now()):
                os.write(gfd, (json.dumps({**row, **tag}) + "\n").encode())


@contextlib.contextmanager
def _open_fresh(path: Path) -> Any:
    """An append-only descriptor on an emptied file (one ``os.write`` per row)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)
