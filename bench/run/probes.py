"""What the server itself says during a cell: KV capacity, process memory, prefix-cache and speculative counters.

Engines report these differently, so each figure is read where its engine puts it:

- KV capacity in tokens: servebench's ``servebench:kv_cache_capacity_tokens`` gauge; vLLM's log line
  ``KV cache size: N tokens`` and ``Available KV cache memory: X GiB``; llama-server's log lines
  ``n_ctx = N`` and ``KV buffer size = X MiB``.
- Prefix-cache hits and speculative acceptance: counters in ``/metrics``, summarised by
  :mod:`bench.metrics.server` over a load run's measured window (in its ``summary.json``).
- Memory: resident set size of the server's whole process tree (vLLM runs its engine in a child), sampled
  in a thread; on a GPU the scrape's NVML figures are used instead.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

GIB = float(1 << 30)
_VLLM_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
# GPU: "Available KV cache memory: X GiB"; CPU: "Explicitly set (X/total) GiB for KV cache".
_VLLM_MEMORY = re.compile(r"(?:Available KV cache memory: |Explicitly set \()([\d.]+)(?:/[\d.]+\))? GiB")
_LLAMA_CTX = re.compile(r"llama_context: n_ctx\s+= (\d+)")
_LLAMA_KV_MIB = re.compile(r"KV buffer size =\s+([\d.]+) MiB")


@dataclass(frozen=True)
class KVInfo:
    """How many tokens the engine's KV cache holds and how many bytes it takes (None: not reported)."""

    capacity_tokens: int | None
    kv_bytes: float | None
    source: str

    @property
    def tokens_per_gib(self) -> float | None:
        """Capacity per GiB of KV memory: the figure a quantized KV cache improves."""
        if not self.capacity_tokens or not self.kv_bytes:
            return None
        return self.capacity_tokens / (self.kv_bytes / GIB)

    def as_dict(self) -> dict[str, Any]:
        """For ``cell.json``."""
        return {"capacity_tokens": self.capacity_tokens, "kv_bytes": self.kv_bytes, "source": self.source,
                "tokens_per_gib": self.tokens_per_gib}


def kv_from_metrics(text: str) -> KVInfo | None:
    """servebench's own gauge (the Transformers engine: ``max_batch × max_model_len``, dense cache)."""
    match = re.search(r"^servebench:kv_cache_capacity_tokens(?:\{[^}]*\})? ([\d.e+]+)$", text, re.M)
    return KVInfo(int(float(match.group(1))), None, "servebench:kv_cache_capacity_tokens") if match else None


def kv_from_log(log: str, gpus: int = 1) -> KVInfo | None:
    """vLLM's or llama-server's startup log lines (the last occurrence wins).

    vLLM logs the capacity in tokens for the whole engine, but the KV memory of one worker (its first rank):
    with the model split over ``gpus`` (tensor × pipeline parallel), every GPU holds as much again.
    """
    tokens = _VLLM_TOKENS.findall(log)
    if tokens:
        memory = _VLLM_MEMORY.findall(log)
        kv_bytes = float(memory[-1]) * GIB * gpus if memory else None
        return KVInfo(int(tokens[-1].replace(",", "")), kv_bytes, "vLLM log: KV cache size")
    ctx = _LLAMA_CTX.findall(log)
    if ctx:
        mib = _LLAMA_KV_MIB.findall(log)
        kv_bytes = sum(float(m) for m in mib) * (1 << 20) if mib else None
        return KVInfo(int(ctx[-1]), kv_bytes, "llama.cpp log: n_ctx, KV buffer size")
    return None


def kv_info(metrics_url: str, log_path: Path, gpus: int = 1) -> KVInfo:
    """The server's KV capacity, from ``/metrics`` or else its log (``gpus``: what one model copy is split over)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode(errors="replace")
    except OSError:
        text = ""
    found = kv_from_metrics(text)
    if found is None:
        found = kv_from_log(log_path.read_text(errors="replace") if log_path.exists() else "", gpus)
    return found or KVInfo(None, None, "not reported")


# ---- process memory (I/O, in a thread) ---------------------------------------------------------


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class MemorySampler:
    """Samples the server tree's RSS every ``interval_s``; ``take_peak()`` returns the peak since the last call."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s = pid, interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._window_peak = 0
        self.overall_peak = 0
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        rss = tree_rss_bytes(self.pid)
        with self._lock:
            self._window_peak = max(self._window_peak, rss)
            self.overall_peak = max(self.overall_peak, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def take_peak(self) -> float:
        """Peak RSS in GiB since the previous call (sampling once more first)."""
        self._sample()
        with self._lock:
            peak, self._window_peak = self._window_peak, 0
        return peak / GIB
