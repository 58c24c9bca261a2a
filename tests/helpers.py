"""Helpers shared by test modules."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from backends.base import EngineOptions
from backends.checkpoints import Registry
from backends.net import free_port
from bench.load.calibration import calibration_server
from bench.load.config import LoadConfig
from bench.load.executor import Job
from bench.load.runner import Prepared, run_load_async
from bench.metrics import LoadSummary
from servers.launch import ServerHandle, build_spec, running_server

TTFT_MS, ITL_MS = 20.0, 4.0  # what the calibration server scripts in the load-generator tests


def serve(registry: Registry, backend: str, model: str, options: EngineOptions, log_dir: Path,
          api_key: str | None = None, **launch: Any) -> Iterator[ServerHandle]:
    """One real server on 127.0.0.1 for a fixture to yield (``yield from serve(...)``), stopped after it; its log is
    ``log_dir/BACKEND-PORT.log``, ``launch`` goes to :func:`servers.launch.running_server` (max_queue, timeout_s)."""
    spec = build_spec(registry, backend, model, options, port=free_port(), api_key=api_key)
    with running_server(spec, registry, log_dir / f"{backend}-{spec.port}.log", **launch) as handle:
        print(f"{backend} ready in {handle.startup_s:.1f}s; log {handle.log_path}")
        yield handle


def calibration_config(url: str, **overrides: object) -> LoadConfig:
    """A load config for the calibration server: no tokenizer, no scraping, 16 tokens in and out."""
    base: dict[str, object] = {
        "url": url,
        "model": "calibration",
        "tokenizer": None,
        "scrape": False,
        "seed": 1,
        "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 16},
    }
    return LoadConfig.model_validate({**base, **overrides})


def scripted_server(log_dir: Path | None = None, tokens_per_chunk: int = 1) -> Iterator[str]:
    """Yield the URL of a calibration server scripted with ``TTFT_MS`` and ``ITL_MS`` (for a fixture's ``yield from``).

    With ``log_dir`` the server logs when it received and wrote each request there.
    """
    log = None if log_dir is None else str(log_dir)
    with calibration_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens_per_chunk=tokens_per_chunk, log_dir=log) as url:
        yield url


def moderate_load() -> bool:
    """Whether the 1-minute load average is below the core count (tight timing checks hold only then)."""
    return os.getloadavg()[0] < (os.cpu_count() or 1)


def cpu_stall_us() -> int | None:
    """The kernel's running total of microseconds in which some runnable task waited for a CPU (``some total``
    of /proc/pressure/cpu, Linux PSI); None where the kernel does not expose it."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(some.rsplit("total=", 1)[1])


class CpuPressure:
    """The share of wall time in which some task waited for a CPU over a block (``with CpuPressure() as p``, then
    ``p.share``): a millisecond timing check holds only where it stayed small. The 1-minute load average read
    before a three-second run misses a neighbour that starts meanwhile; this measures the run itself."""

    def __enter__(self) -> CpuPressure:
        self.share: float | None = None
        self._start = (time.perf_counter(), cpu_stall_us())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, stall = time.perf_counter() - self._start[0], cpu_stall_us()
        if stall is not None and self._start[1] is not None and wall > 0:
            self.share = (stall - self._start[1]) / 1e6 / wall


def burn(seconds: float) -> None:
    """Hold the CPU (and the event loop) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def burner(stop: asyncio.Event, busy_s: float = 0.08, idle_s: float = 0.03) -> None:
    """A CPU-burning callback in the client's own event loop, as a slow parser or a busy display would be."""
    while not stop.is_set():
        burn(busy_s)
        await asyncio.sleep(idle_s)


def starved_run_load(config: LoadConfig, out: Path, console: Console | None = None,
                     prepared: Prepared | None = None) -> LoadSummary:
    """A real run whose single client process shares its event loop with a CPU burner (:func:`burner`)."""

    async def starved() -> LoadSummary:
        stop = asyncio.Event()
        task = asyncio.create_task(burner(stop))
        try:
            return await run_load_async(config, out, console, prepared=prepared)
        finally:
            stop.set()
            await task

    return asyncio.run(starved())


# The part of a stand-in llama-server that answers /health and /completion as the real one does.
_STAND_IN_SERVE = r'''
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self): self._send({"status": "ok"})
    def do_POST(self): self._send({"content": " 5", "tokens_predicted": 4})
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def stand_in_llama_server(path: Path, preamble: str) -> Path:
    """Write an executable stand-in for a llama.cpp build's ``llama-server`` at ``path``: it runs ``preamble``
    (Python; it may print log lines or kill itself, as a broken binary would), then serves like the real one."""
    path.write_text(f"#!{sys.executable}\nimport http.server, json, os, signal, sys\n{preamble}\n{_STAND_IN_SERVE}")
    path.chmod(0o755)
    return path


def server_metric(url: str, name: str, timeout: float = 30.0) -> float:
    """The value of ``name`` (the first labelled sample) on the server's /metrics."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=timeout).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_server_idle(url: str, timeout_s: float) -> None:
    """Wait until our server has no request in flight and none running in its engine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (server_metric(url, "servebench:requests_in_flight") == 0
                and server_metric(url, "vllm:num_requests_running") == 0):
            return
        time.sleep(0.1)
    raise AssertionError("server still busy")


def multi_turn_config(url: str, model: str, **workload: object) -> LoadConfig:
    """Two sessions of four turns over the chat API, the server's /metrics scraped every 0.2 s (the prefix-cache
    tests against llama-server and vLLM)."""
    base: dict[str, object] = {"kind": "multi-turn", "turns": 4, "user_tokens": 32, "output_tokens": 16,
                               "think_time_s": 0.3}
    return LoadConfig.model_validate({"url": url, "model": model, "workload": {**base, **workload},
                                      "arrival": {"kind": "concurrency", "n": 2}, "num_requests": 8,
                                      "scrape_interval_s": 0.2, "request_timeout_s": 300})


# Modules a load worker process must not import: counting tokens needs only the ``tokenizers`` library.
HEAVY_MODULES = ("torch", "transformers")


def recording_worker_main(job: Job, path: str, ready: Any, start: Any, t0_box: Any) -> None:
    """``runner._worker_main`` (a worker process's entry point), then which modules the process had imported, in
    ``imports-<worker>.json`` beside the records (swap it in with ``monkeypatch.setattr(runner, "_worker_main",
    ...)``: the parent pickles this function by name, so the spawned worker runs it)."""
    from bench.load.runner import _worker_main

    _worker_main(job, path, ready, start, t0_box)
    loaded = {name: name in sys.modules for name in (*HEAVY_MODULES, "tokenizers")}
    (Path(path).parent / f"imports-{job.worker}.json").write_text(json.dumps(loaded))
