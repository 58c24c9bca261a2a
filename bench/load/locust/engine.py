"""``bench load --engine locust``: the same run, driven by locust in subprocesses.

Locust monkey-patches the standard library with gevent when imported, so it never runs in the
``bench`` process: this module starts ``locust -f servers/locustfile.py --headless`` (one process,
or a master and ``workers`` worker processes on 127.0.0.1), hands it the prompts that
:func:`bench.load.runner.prepare_prompts` prepared (the same bodies ``bench load`` would send), and
lets the locustfile append one :class:`~bench.load.records.RequestRecord` per request to
``requests.jsonl``. The summary is then computed exactly as for the native engine
(:func:`bench.load.runner.rebuild_summary`), so the two engines compare one to one.

Locust users are closed-loop: ``arrival`` must be ``concurrency N`` (N users, no think time).
Locust's own statistics (with the ``METRIC`` rows) go to ``<out>/locust/``: ``stats.json``, written at
exit, and the ``locust_*.csv`` files, which locust refreshes every second (their last second may be
missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.load.arrivals import ConcurrencyArrival
from bench.load.config import LoadConfig
from bench.load.display import Progress, live_progress, summary_table
from bench.load.health import HEALTH_FILE
from bench.load.locust.settings import API_KEY_ENV, write_prompts
from bench.load.records import RequestRecord
from bench.load.runner import prepare_prompts, rebuild_summary, warn_token_sources
from bench.metrics import LoadSummary

# Without --duration, the run is bounded by the request count; this caps the wall time anyway.
DEFAULT_MAX_RUN_TIME_S = 6 * 3600
STOP_TIMEOUT_S = 30
EXIT_GRACE_S = 60.0


@dataclass(frozen=True)
class LocustPlan:
    """Everything needed to start the locust processes of one run."""

    config: LoadConfig
    out_dir: Path
    run_id: str
    users: int
    workers: int
    run_time_s: float
    master_port: int

    @property
    def locust_dir(self) -> Path:
        """Where locust's own outputs (logs, CSV, prompts) go."""
        return self.out_dir / "locust"


def locustfile() -> Path:
    """``servers/locustfile.py`` of the installed ``servers`` package (found without importing it)."""
    spec = importlib.util.find_spec("servers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the servers package is not installed: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations))) / "locustfile.py"


def check_config(config: LoadConfig) -> int:
    """The number of locust users for ``config``; refuses what locust cannot drive."""
    if not isinstance(config.arrival, ConcurrencyArrival):
        raise ValueError(
            f"--engine locust drives closed-loop users (--concurrency N), not {config.arrival.describe()}; "
            "use --engine native for open-loop arrivals"
        )
    users = config.arrival.n
    if config.workers > users:
        raise ValueError(f"--workers {config.workers} needs at least as many users (--concurrency {users})")
    if config.extra_body or config.logprobs_token_count:
        raise ValueError("--engine locust does not send extra_body or logprobs yet; use --engine native")
    return users


def common_args(plan: LocustPlan) -> list[str]:
    """Arguments of the process that runs the test (the master, or the only process)."""
    cfg, ldir = plan.config, plan.locust_dir
    args = [
        "--headless",
        "--users", str(plan.users),
        "--spawn-rate", str(min(plan.users * 20, 100 * plan.workers)),
        "--run-time", f"{max(int(plan.run_time_s + 0.999), 1)}s",
        "--stop-timeout", str(STOP_TIMEOUT_S),
        "--host", cfg.root_url,
        "--model", cfg.model,
        "--api", cfg.api,
        "--prompts-file", str(ldir / "prompts.jsonl"),
        "--records", str(plan.out_dir / "requests.jsonl"),
        "--max-requests", str(cfg.num_requests or 0),
        "--warmup", str(cfg.warmup),
        "--run-id", plan.run_id,
        "--request-timeout", str(cfg.request_timeout_s),
        "--csv", str(ldir / "locust"),  # refreshed every second: the UI's charts, as files
        "--json-file", str(ldir / "stats"),  # written once at the end: the final figures
        "--exit-code-on-error", "0",  # failed requests are data in the records, not a failed run
        "--only-summary",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    if cfg.tokenizer:  # otherwise each process finds the model's own, as bench load does
        args += ["--tokenizer", cfg.tokenizer]
    if not cfg.force_output_len:
        args.append("--no-ignore-eos")
    return args


def process_env(config: LoadConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The locust processes' environment: ``base``, with the API key of ``config`` or none.

    The key travels as ``OPENAI_API_KEY`` (the locustfile's ``--api-key`` variable), not on the command
    line, where ``ps`` would show it. Without a key, one inherited from ``base`` is dropped, so locust
    sends what the native engine sends.
    """
    env = {k: v for k, v in base.items() if k != API_KEY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    key = config.key()
    if key:
        env[API_KEY_ENV] = key
    return env


def commands(plan: LocustPlan) -> list[list[str]]:
    """The locust command lines: one process, or a master followed by its workers."""
    base = [sys.executable, "-m", "locust", "-f", str(locustfile())]
    if plan.workers <= 1:
        return [base + common_args(plan)]
    port = str(plan.master_port)
    master = base + common_args(plan) + [
        "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
        "--expect-workers", str(plan.workers), "--expect-workers-max-wait", "120",
    ]  # fmt: skip
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", port, "--loglevel", "WARNING"]
    return [master] + [worker] * plan.workers


def run_locust(config: LoadConfig, out_dir: Path, console: Console | None = None) -> LoadSummary:
    """Run ``config`` with locust (``config.workers`` > 1: a master and that many workers)."""
    return asyncio.run(run_locust_async(config, out_dir, console))


async def run_locust_async(config: LoadConfig, out_dir: Path, console: Console | None = None) -> LoadSummary:
    """Async form of :func:`run_locust` (the scraper and progress display run beside locust)."""
    users = check_config(config)
    from backends.net import free_port

    plan = LocustPlan(
        config=config,
        out_dir=out_dir,
        run_id=uuid.uuid4().hex[:8],
        users=users,
        workers=config.workers,
        run_time_s=config.duration_s or DEFAULT_MAX_RUN_TIME_S,
        master_port=free_port(),
    )
    await asyncio.to_thread(_prepare, plan, console)
    meta: dict[str, Any] = {"run_id": plan.run_id, "engine": "locust", "started_unix": time.time()}
    _write_config(plan, {**meta, "finished": False})
    progress = Progress(total=config.total_requests() if config.num_requests is not None else None)
    stop = asyncio.Event()
    side = _side_tasks(plan, console, progress, stop)
    try:
        await _run_processes(plan, progress)
    finally:
        stop.set()
        await asyncio.gather(*side, return_exceptions=True)
    _write_config(plan, {**meta, "finished": True})
    summary = rebuild_summary(out_dir, config.slo, config)
    if console is not None:
        title = f"bench load --engine locust: {users} users, {max(plan.workers, 1)} process(es)"
        console.print(summary_table(summary, title))
    warn_token_sources(summary, console)
    return summary


def _prepare(plan: LocustPlan, console: Console | None) -> None:
    plan.locust_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "requests.jsonl").write_bytes(b"")
    (plan.out_dir / HEALTH_FILE).unlink(missing_ok=True)  # locust measures no client health: none from an old run
    write_prompts(plan.locust_dir / "prompts.jsonl", prepare_prompts(plan.config, console))


def _write_config(plan: LocustPlan, run: dict[str, Any]) -> None:
    data = {"config": plan.config.model_dump(mode="json"), "run": run}
    (plan.out_dir / "load_config.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def _side_tasks(
    plan: LocustPlan, console: Console | None, progress: Progress, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(_tail_records(plan.out_dir / "requests.jsonl", progress, stop))]
    cfg = plan.config
    if cfg.scrape:
        from bench.scrape import Scraper

        scraper = Scraper(cfg.root_url + "/metrics", plan.out_dir, cfg.scrape_interval_s, time.perf_counter)
        tasks.append(asyncio.create_task(scraper.run(stop)))
    if console is not None and console.is_terminal:
        live = live_progress(console, progress, time.perf_counter, f"locust {plan.users} users", stop)
        tasks.append(asyncio.create_task(live))
    return tasks


async def _tail_records(path: Path, progress: Progress, stop: asyncio.Event) -> None:
    with path.open("rb") as fh:
        pending = b""
        while not stop.is_set():
            pending += fh.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    progress.add(RequestRecord.from_dict(json.loads(line)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def _run_processes(plan: LocustPlan, progress: Progress) -> None:
    """Start the locust processes, wait for the test process, then for the workers; clean up."""
    logs = plan.locust_dir
    procs: list[asyncio.subprocess.Process] = []
    names = ["locust"] if plan.workers <= 1 else ["master"] + [f"worker-{i}" for i in range(plan.workers)]
    env = process_env(plan.config, os.environ)
    try:
        for name, cmd in zip(names, commands(plan), strict=True):
            with (logs / f"{name}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *cmd, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
                    )
                )
        budget = plan.run_time_s + STOP_TIMEOUT_S + EXIT_GRACE_S
        code = await asyncio.wait_for(procs[0].wait(), budget)
        for p in procs[1:]:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wait(), EXIT_GRACE_S)
    finally:
        await _stop_all(procs)
    if code != 0:
        tail = (logs / f"{names[0]}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust exited with code {code} after {progress.done} requests:\n{tail}")


async def _stop_all(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        if p.returncode is None:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
