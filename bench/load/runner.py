"""Run a load test end to end: prepare prompts, execute, record, summarise.

Stable API (called by ``bench run`` and the CLI)::

    run_load(config: LoadConfig, out_dir: Path, console: Console | None = None,
             prepared: Prepared | None = None) -> LoadSummary
    await run_load_async(config, out_dir, console=None, clock=None, prepared=None) -> LoadSummary
    rebuild_summary(out_dir: Path, slo: SLO | None = None) -> LoadSummary

``out_dir`` receives ``load_config.json``, ``requests.jsonl`` (appended as each request ends),
``server_metrics.jsonl``/``gpu.jsonl`` (when scraping) and ``summary.json``. The summary is always
computed from ``requests.jsonl``, so a killed run can be summarised later with ``rebuild_summary``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import resource
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from backends import archived
from backends.checkpoints import model_bytes_of
from bench.load.arrivals import ScheduleArrival
from bench.load.clock import Clock, MonotonicClock
from bench.load.config import LoadConfig
from bench.load.conversations import Conversation, TemplateCounts
from bench.load.display import Progress, live_progress, summary_table
from bench.load.executor import Executor, Job
from bench.load.health import HEALTH_FILE, read_health, watch_client
from bench.load.records import JsonlAppender, RequestRecord, read_records, token_source_warning
from bench.load.sessions import session_inputs
from bench.load.tokenizer import Tokenizer, load_tokenizer, token_counter
from bench.load.workloads import MultiTurnWorkload, Prompt, TextBuilder, materialize
from bench.metrics import SLO, LoadSummary, measured_window, summarize
from bench.metrics.health import behind_advice, client_health, sessions_behind_reason, with_reason
from bench.metrics.server import ScrapeRow, ServerFigures, server_figures, window_rows
from bench.metrics.sessions import by_turn, session_figures
from bench.metrics.timeseries import TIMESERIES_FILE, TimeSeries, latency_knee, time_series
from bench.scrape import Scraper, read_gpu_rows, read_server_rows

log = logging.getLogger(__name__)
# Time between starting the side tasks (scraper, display) and the first request, so their setup
# does not delay the first sends.
START_LEAD_S = 0.25
# The label of the scrape sample taken right before the first measured request (after the warm-up).
MEASURED_MARK = "measured"


def run_load(config: LoadConfig, out_dir: Path, console: Console | None = None,
             prepared: Prepared | None = None) -> LoadSummary:
    """Synchronous wrapper around :func:`run_load_async` (uses uvloop when installed)."""
    coro = run_load_async(config, out_dir, console, prepared=prepared)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def run_load_async(
    config: LoadConfig, out_dir: Path, console: Console | None = None, clock: Clock | None = None,
    prepared: Prepared | None = None,
) -> LoadSummary:
    """Run ``config`` against its endpoint, write the results to ``out_dir`` and return the summary.

    ``prepared``: the tokenizer and prompts of earlier runs, reused where this run asks for the same (a sweep).
    """
    clock = clock or MonotonicClock()
    records_path = await asyncio.to_thread(_fresh_records_file, out_dir)
    prompts, tokenizer = await asyncio.to_thread(prepare, config, console, prepared)
    conversations, template = await asyncio.to_thread(prepare_sessions, config, tokenizer)
    run_id = uuid.uuid4().hex[:8]
    _raise_nofile_limit()
    progress = Progress(total=config.total_requests() if config.num_requests is not None else None)
    stop = asyncio.Event()
    side, scraper = _side_tasks(config, out_dir, console, progress, clock, stop)
    meta: dict[str, Any] = {"run_id": run_id, "started_unix": time.time(), "t0": None, "finished": False}
    # Written first so that a killed run can still be summarised with its SLOs.
    _write_json(out_dir / "load_config.json", {"config": config.model_dump(mode="json"), "run": meta})
    workers = config.processes()
    counter = token_counter(tokenizer)
    jobs = [Job(config, prompts, run_id, w, workers, counter=counter, conversations=conversations,
                template=template) for w in range(workers)]  # fmt: skip
    try:
        if len(jobs) == 1:
            meta["t0"] = await _run_inline(jobs[0], records_path, clock, progress, scraper)
        else:
            meta["t0"] = await _run_processes(jobs, records_path, clock, progress)
    finally:
        stop.set()
        await asyncio.gather(*side, return_exceptions=True)
    meta["finished"] = True
    _write_json(out_dir / "load_config.json", {"config": config.model_dump(mode="json"), "run": meta})
    summary = rebuild_summary(out_dir, config.slo, config)
    write_time_series(out_dir, config, meta["t0"])
    if console is not None:
        console.print(summary_table(summary, f"bench load: {config.arrival.describe()}"))
    warn_token_sources(summary, console)
    warn_client_behind(summary, console)
    warn_prompt_tokens(summary, console)
    return summary


def warn_prompt_tokens(summary: LoadSummary, console: Console | None) -> None:
    """A warning when the server counts our prompts otherwise than our tokenizer did."""
    check = summary.prompt_tokens_check
    if check is not None and check.mismatch:
        _warn(console, check.describe())


def warn_client_behind(summary: LoadSummary, console: Console | None) -> None:
    """A warning when the client fell behind (its lag is then in the timings it recorded)."""
    if summary.client is not None and summary.client.behind:
        _warn(console, behind_advice(summary.client))


def warn_token_sources(summary: LoadSummary, console: Console | None) -> None:
    """The run's one warning when requests came without ``usage`` (and how their tokens were counted)."""
    note = token_source_warning(summary.token_count_sources)
    if note is not None:
        _warn(console, note)


def _fresh_records_file(out_dir: Path) -> Path:
    """Create ``out_dir`` and an empty ``requests.jsonl`` (a new run replaces old records and client health)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / HEALTH_FILE).unlink(missing_ok=True)
    path = out_dir / "requests.jsonl"
    path.write_bytes(b"")
    return path


def prepare_prompts(config: LoadConfig, console: Console | None = None) -> list[Prompt]:
    """Load the tokenizer and build every prompt before the clock starts."""
    return prepare(config, console)[0]


class Prepared:
    """What runs prepared before their clocks started, for the next run that asks for the same: the tokenizer of
    each (tokenizer, model), and the last run's prompts.

    A sweep's steps (and a ``bench run`` cell's points) load no tokenizer again: a GGUF's, which transformers
    converts, takes seconds for a 128k vocabulary. Each step has its own seed
    (:func:`bench.load.sweep.step_seed`), so it draws its own prompts, about a second for 388 prompts of 512 tokens;
    a run repeated with the same seed and workload reuses them.
    """

    def __init__(self) -> None:
        self._tokenizers: dict[tuple[str | None, str], tuple[Tokenizer | None, str]] = {}
        self._prompts: tuple[tuple[Any, ...], list[Prompt]] | None = None

    def tokenizer(self, config: LoadConfig) -> tuple[Tokenizer | None, str]:
        """:func:`load_tokenizer` for ``config``, loaded once."""
        key = (config.tokenizer, config.model)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(*key)
        return self._tokenizers[key]

    def prompts(self, config: LoadConfig, tokenizer: Tokenizer | None) -> list[Prompt]:
        """Every prompt of ``config``'s run; the last run's when it had the same workload, count and seed."""
        key = (config.tokenizer, config.model, config.api, config.workload.model_dump_json(),
               config.total_requests(), config.seed)  # fmt: skip
        if self._prompts is None or self._prompts[0] != key:
            builder = TextBuilder(tokenizer, config.api)
            self._prompts = key, materialize(config.workload, config.total_requests(), builder, config.seed)
        return list(self._prompts[1])


def prepare(config: LoadConfig, console: Console | None = None,
            prepared: Prepared | None = None) -> tuple[list[Prompt], Tokenizer | None]:
    """Every prompt of the run, and the tokenizer (also used to count tokens when usage is missing); from
    ``prepared`` where it holds them."""
    prepared = prepared or Prepared()
    tokenizer, where = prepared.tokenizer(config)
    if tokenizer is None:
        _warn(
            console,
            f"no tokenizer for {config.model!r} ({where}); input lengths are approximate. "
            "Token counts come from the server's usage.",
        )
    prompts = prepared.prompts(config, tokenizer)
    inexact = sum(1 for p in prompts if not p.exact)
    if tokenizer is not None and inexact:
        _warn(console, f"{inexact} prompts could not be made exactly {config.workload.kind} length")
    return prompts, tokenizer


def prepare_sessions(config: LoadConfig,
                     tokenizer: Tokenizer | None) -> tuple[list[Conversation], TemplateCounts | None]:
    """A multi-turn run's conversations and chat-template counts (none for the other workloads)."""
    if not isinstance(config.workload, MultiTurnWorkload):
        return [], None
    return session_inputs(config, TextBuilder(tokenizer, "chat"))


def _warn(console: Console | None, text: str) -> None:
    log.warning(text)
    if console is not None:
        console.print(f"[yellow]warning:[/yellow] {text}")


def _side_tasks(
    config: LoadConfig,
    out_dir: Path,
    console: Console | None,
    progress: Progress,
    clock: Clock,
    stop: asyncio.Event,
) -> tuple[list[asyncio.Task[None]], Scraper | None]:
    tasks = []
    scraper = None
    if config.scrape:
        scraper = Scraper(config.root_url + "/metrics", out_dir, config.scrape_interval_s, clock.now)
        tasks.append(asyncio.create_task(scraper.run(stop)))
    if console is not None and console.is_terminal:
        tasks.append(
            asyncio.create_task(live_progress(console, progress, clock.now, config.arrival.describe(), stop))
        )
    return tasks, scraper


async def _run_inline(job: Job, path: Path, clock: Clock, progress: Progress, scraper: Scraper | None = None) -> float:
    with JsonlAppender(path) as sink:

        def write(record: RequestRecord) -> None:
            sink.write(record)
            progress.add(record)

        async def boundary() -> None:
            if scraper is not None:
                await scraper.mark(MEASURED_MARK)

        executor = Executor(job, clock, write, boundary)
        t0 = clock.now() + START_LEAD_S
        async with watch_client(job.worker, clock.now, path.parent / HEALTH_FILE):
            await executor.run(t0)
    return t0


async def _run_processes(jobs: list[Job], path: Path, clock: Clock, progress: Progress) -> float:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    start = ctx.Event()
    t0_box = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_worker_main, args=(job, str(path), ready, start, t0_box), daemon=True)
        for job in jobs
    ]
    for p in procs:
        p.start()
    for _ in procs:
        await asyncio.to_thread(ready.get, True, 120)
    t0 = clock.now() + START_LEAD_S
    t0_box.value = t0
    start.set()
    await _tail_until_done(path, procs, progress)
    return t0


async def _tail_until_done(path: Path, procs: list[Any], progress: Progress) -> None:
    with path.open("rb") as fh:
        pending = b""
        while True:
            alive = any(p.is_alive() for p in procs)
            pending += fh.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    progress.add(RequestRecord.from_dict(json.loads(line)))
            if not alive:
                break
            await asyncio.sleep(0.25)
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"load worker processes failed with exit codes {bad}")


def _worker_main(job: Job, path: str, ready: Any, start: Any, t0_box: Any) -> None:
    """Entry point of a worker process: wait for the common start time, run, append records."""
    _die_with_parent()
    _raise_nofile_limit()

    async def main() -> None:
        with JsonlAppender(Path(path)) as sink:
            executor = Executor(job, MonotonicClock(), sink.write)
            ready.put(job.worker)
            await asyncio.to_thread(start.wait)
            async with watch_client(job.worker, executor.clock.now, Path(path).parent / HEALTH_FILE):
                await executor.run(float(t0_box.value))

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the parent dies, so a killed run leaves no orphans."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _raise_nofile_limit() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


class SavedConfigError(ValueError):
    """A ``load_config.json`` that no longer validates, where its SLOs would be needed."""


def _load_saved_config(out_dir: Path, need_slo: bool) -> LoadConfig | None:
    """The run's saved config; one that does not validate is an error when its SLOs are needed (no SLO was
    given), else a warning (the MBU inputs it held are then unknown), never silently dropped."""
    path = out_dir / "load_config.json"
    if not path.exists():
        return None
    try:
        return LoadConfig.model_validate(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as exc:
        message = f"{path} does not validate as a LoadConfig ({exc})"
        if need_slo:
            raise SavedConfigError(f"{message}; give the SLOs (--slo-*) to summarise without it") from exc
        log.warning("%s; summarising without it", message)
        return None


def rebuild_summary(out_dir: Path, slo: SLO | None = None, config: LoadConfig | None = None) -> LoadSummary:
    """(Re)compute ``summary.json`` from ``requests.jsonl`` and the scrape files in ``out_dir``.

    Without ``config``, the folder's ``load_config.json`` gives the SLOs (unless ``slo`` is given) and the
    MBU inputs; :class:`SavedConfigError` when it no longer validates and its SLOs are needed.
    """
    config = config or _load_saved_config(out_dir, need_slo=slo is None)
    if slo is None:
        slo = config.slo if config is not None else SLO()
    path = out_dir / "requests.jsonl"
    if not archived.exists(path):
        raise FileNotFoundError(f"{path} not found: is {out_dir} a bench load output folder?")
    records = read_records(path)
    summary = summarize(records, slo)
    summary.server = _server_figures(out_dir, summary, config, records)
    summary.client = client_health(read_health(out_dir / HEALTH_FILE), measured_window(records), summary.itl_ms.mean)
    _session_figures(summary, records, config)
    _write_json(out_dir / "summary.json", summary.model_dump(mode="json"))
    return summary


def _session_figures(summary: LoadSummary, records: Sequence[RequestRecord], config: LoadConfig | None) -> None:
    """Multi-turn runs: TTFT/TPOT by turn, sessions achieved against the target (and a verdict if short)."""
    summary.turns = by_turn(records)
    target = config.arrival.in_flight_limit if config is not None else None
    summary.sessions = session_figures(records, target)
    if summary.sessions is not None:
        reason = sessions_behind_reason(summary.sessions.achieved, summary.sessions.target)
        summary.client = with_reason(summary.client, reason)


def write_time_series(out_dir: Path, config: LoadConfig, t0: float | None) -> TimeSeries:
    """Write ``timeseries.json`` beside the records (the run per window, and the latency knee of a rate
    schedule); a run whose load changes over time (a schedule, a trace) also gets ``timeseries.png``."""
    records = read_records(out_dir / "requests.jsonl")
    start = t0 if t0 is not None else min((r.scheduled_t for r in records), default=0.0)
    expected = config.arrival.schedule.mass if isinstance(config.arrival, ScheduleArrival) else None
    windows = time_series(records, read_server_rows(out_dir / "server_metrics.jsonl"), start, config.window_s,
                          config.slo, expected)
    knee = latency_knee(windows, config.slo) if expected is not None else None
    series = TimeSeries(window_s=config.window_s, windows=windows, knee=knee)
    _write_json(out_dir / TIMESERIES_FILE, series.model_dump(mode="json"))
    if config.arrival.kind in ("schedule", "trace"):
        from bench.report.plots import time_series_plot

        time_series_plot(windows, out_dir, "timeseries", f"bench load: {config.arrival.describe()}", config.slo)
    return series


def rebuild_time_series(out_dir: Path, slo: SLO | None = None) -> TimeSeries | None:
    """(Re)write ``timeseries.json`` from the folder's records and saved config (None without a valid config)."""
    config = _load_saved_config(out_dir, need_slo=False)
    if config is None:
        return None
    if slo is not None:
        config = config.model_copy(update={"slo": slo})
    t0 = json.loads((out_dir / "load_config.json").read_text()).get("run", {}).get("t0")
    return write_time_series(out_dir, config, t0)


def measured_server_rows(out_dir: Path) -> list[ScrapeRow]:
    """The ``server_metrics.jsonl`` rows of a load folder that cover its measured window."""
    rows = read_server_rows(out_dir / "server_metrics.jsonl")
    path = out_dir / "requests.jsonl"
    window = measured_window(read_records(path)) if path.exists() else None
    return rows if window is None else window_rows(rows, *window)


def _server_figures(
    out_dir: Path, summary: LoadSummary, config: LoadConfig | None, records: Sequence[RequestRecord] = ()
) -> ServerFigures:
    """Read the scrape files and the model's size (I/O), then the pure figures over the measured window."""
    return server_figures(
        read_server_rows(out_dir / "server_metrics.jsonl"),
        read_gpu_rows(out_dir / "gpu.jsonl"),
        records,
        measured_window(records),
        output_tokens=summary.total_output_tokens,
        tpot_mean_ms=summary.tpot_ms.mean,
        client_ms={"ttft": summary.ttft_ms.mean, "itl": summary.itl_ms.mean},
        model_bytes=(config.model_bytes or model_bytes_of(config.model)) if config else None,
        peak_gbs=config.gpu_peak_bandwidth_gbs if config else None,
        gpus=config.server_gpus if config else 1,
    )
