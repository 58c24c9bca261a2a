"""The locust side: a ``User`` that streams completions and reports TTFT, TPOT, ITL and E2E.

Each finished request becomes a :class:`~bench.load.records.RequestRecord` (appended to
``--records`` when given) and a set of locust request events, so the web UI's charts and the CSV and
JSON outputs show the metrics:

- ``POST <path>``: the whole request (E2E), failed when the request failed;
- ``METRIC ttft``, ``METRIC tpot``, ``METRIC e2e``: one entry per measured request;
- ``METRIC itl``: one entry per output token after the first.

Output tokens are counted as ``bench load`` counts them (:func:`bench.load.records.make_record`): from
the server's ``usage``; without it, by retokenizing the streamed text with the tokenizer loaded at test
start, or else one per chunk. At test stop each process logs one warning when any request came without
``usage`` (:func:`bench.load.records.token_source_warning`).

``--max-requests`` bounds the run over all users and workers: process ``p`` of ``P`` sends the
request indices ``p, p+P, ...`` below the bound (as ``bench load``'s worker processes do), then
reports ``servebench_done`` to the master (or to itself when running alone). When every process has
reported, the run quits (headless) or stops (web UI). Per-run state lives on the locust
``Environment``; this module keeps none.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust import User, constant, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from bench.load.client import body_for_index, build_body
from bench.load.locust.settings import (
    DEFAULT_PROMPT_POOL,
    WORKERS_DEST,
    LocustSettings,
    add_arguments,
    read_prompts,
    settings_from_options,
)
from bench.load.locust.stream import make_client, stream_request
from bench.load.records import JsonlAppender, RequestRecord, make_record, token_source_warning
from bench.load.tokenizer import Tokenizer, load_tokenizer, token_counter
from bench.load.workloads import Prompt
from bench.metrics import e2e, itl, tpot, ttft

log = logging.getLogger(__name__)
STATE_ATTR = "servebench_run"
TALLY_ATTR = "servebench_tally"
DONE_MESSAGE = "servebench_done"
METRIC = "METRIC"


@dataclass
class RunState:
    """One process's share of a run: prompts, request bodies, its request indices and its sink."""

    settings: LocustSettings
    prompts: list[Prompt]
    bodies: list[bytes]
    worker: int
    indices: Iterator[int]
    quota: int | None
    sink: JsonlAppender | None
    count_tokens: Callable[[str], int] | None = None  # output tokens of a response without usage
    completed: int = 0
    sources: Counter[str] = field(default_factory=Counter)  # token_count_source of measured successes

    def tally(self, record: RequestRecord) -> None:
        """Count where a finished request's output-token count came from (as the summary does)."""
        self.completed += 1
        if record.ok and not record.warmup:
            self.sources[record.token_count_source] += 1

    def next_index(self) -> int | None:
        """The next request index of this process, or ``None`` when its share is used up."""
        index = next(self.indices)
        limit = self.settings.limit
        return None if limit is not None and index >= limit else index


@dataclass
class DoneTally:
    """On the master (or a lone process): which processes have finished their share."""

    expected: int
    reported: set[int] = field(default_factory=set)


def build_state(settings: LocustSettings, worker: int) -> RunState:
    """Prepare prompts, bodies and the token counter for process ``worker`` of ``settings.workers``."""
    tokenizer, where = load_tokenizer(settings.tokenizer, settings.model)
    if tokenizer is None and settings.prompts_file is None:
        log.warning("no tokenizer for %r (%s): prompt lengths are approximate", settings.model, where)
    prompts = _prompts(settings, tokenizer)
    bodies = [
        build_body(
            settings.api,
            settings.model,
            p.text,
            p.output_tokens,
            force_output_len=settings.force_output_len,
            logprobs=settings.logprobs_token_count,
            extra={},
        )
        for p in prompts
    ]
    limit, step = settings.limit, settings.workers
    quota = None if limit is None else len(range(worker, limit, step))
    sink = JsonlAppender(settings.records) if settings.records is not None else None
    return RunState(settings, prompts, bodies, worker, itertools.count(worker, step), quota, sink,
                    token_counter(tokenizer))


def _prompts(settings: LocustSettings, tokenizer: Tokenizer | None) -> list[Prompt]:
    if settings.prompts_file is not None:
        return read_prompts(settings.prompts_file)
    from bench.load.workloads import TextBuilder, materialize

    count = settings.limit or DEFAULT_PROMPT_POOL
    return materialize(settings.workload, count, TextBuilder(tokenizer, settings.api), settings.seed)


def run_state(environment: Environment) -> RunState:
    """The state :func:`on_test_start` attached to ``environment``."""
    state = getattr(environment, STATE_ATTR, None)
    if not isinstance(state, RunState):
        raise RuntimeError("servebench state missing: was the test started through this locustfile?")
    return state


# ---- event listeners (registered by servers/locustfile.py) ------------------------------------


def on_init_parser(parser: Any) -> None:
    """``init_command_line_parser``: add servebench's arguments."""
    add_arguments(parser)


def on_init(environment: Environment, **_: Any) -> None:
    """``init``: fail fast on bad arguments; the coordinating process listens for ``servebench_done``."""
    runner = environment.runner
    if isinstance(runner, LocalRunner | MasterRunner):
        if environment.parsed_options is not None:
            settings_from_options(environment.parsed_options)  # raises on a bad workload config
        runner.register_message(DONE_MESSAGE, _on_done)


def on_test_start(environment: Environment, **_: Any) -> None:
    """``test_start``: the master fixes the worker count; every load process builds its state."""
    runner, options = environment.runner, environment.parsed_options
    if options is None or runner is None:
        return
    if isinstance(runner, MasterRunner):
        setattr(options, WORKERS_DEST, max(runner.worker_count, 1))
        setattr(environment, TALLY_ATTR, DoneTally(expected=max(runner.worker_count, 1)))
        return
    worker = runner.worker_index if isinstance(runner, WorkerRunner) else 0
    if isinstance(runner, LocalRunner):
        setattr(options, WORKERS_DEST, 1)
        setattr(environment, TALLY_ATTR, DoneTally(expected=1))
    _close(environment)
    setattr(environment, STATE_ATTR, build_state(settings_from_options(options), worker))


def on_test_stop(environment: Environment, **_: Any) -> None:
    """``test_stop``: close the records file; warn once if output tokens were counted without ``usage``."""
    state = getattr(environment, STATE_ATTR, None)
    if isinstance(state, RunState):
        note = token_source_warning(dict(state.sources))
        if note is not None:
            log.warning("servebench (process %d): %s", state.worker, note)
    _close(environment)


def _close(environment: Environment) -> None:
    state = getattr(environment, STATE_ATTR, None)
    if isinstance(state, RunState) and state.sink is not None:
        state.sink.close()


def _on_done(environment: Environment, msg: Any, **_: Any) -> None:
    tally = getattr(environment, TALLY_ATTR, None)
    if not isinstance(tally, DoneTally):
        return
    tally.reported.add(int(msg.data["worker"]))
    log.info("servebench: %d of %d processes finished their requests", len(tally.reported), tally.expected)
    if len(tally.reported) >= tally.expected:
        gevent.spawn(_finish, environment)  # not in the caller's greenlet: stopping kills users


def _finish(environment: Environment) -> None:
    runner, options = environment.runner, environment.parsed_options
    if runner is None:
        return
    if options is not None and options.headless:
        runner.quit()
    else:
        runner.stop()


# ---- the user ----------------------------------------------------------------------------------


class LLMUser(User):
    """Streams chat or completion requests from the workload, one at a time, with no think time."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Open this user's keep-alive connection."""
        settings = run_state(self.environment).settings
        if not self.host:
            raise ValueError("give --host, e.g. --host http://127.0.0.1:8000")
        self._client = make_client(self.host, settings.request_timeout_s)
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"

    def on_stop(self) -> None:
        """Close the connection."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    @task
    def stream(self) -> None:
        """Send the next request of this process's share, record it and report its metrics."""
        state = run_state(self.environment)
        index = state.next_index()
        if index is None:
            raise StopUser()
        record = self._send(state, index)
        if state.sink is not None:
            state.sink.write(record)
        fire_events(self.environment, record, state.settings.path)
        state.tally(record)
        if state.quota is not None and state.completed >= state.quota:
            self.environment.runner.send_message(DONE_MESSAGE, {"worker": state.worker})  # type: ignore[union-attr]

    def _send(self, state: RunState, index: int) -> RequestRecord:
        rid = f"{state.settings.run_id}-{index}"
        scheduled = time.perf_counter()
        sent_t, obs = stream_request(
            self._client,
            state.settings.path,
            body_for_index(state.bodies, state.prompts, index),
            {**self._headers, "X-Request-Id": rid},
            time.perf_counter,
        )
        prompt = state.prompts[index % len(state.prompts)]
        meta = {
            "warmup": index < state.settings.warmup,
            "worker": state.worker,
            "workload": state.settings.workload.kind,
            **prompt.record_meta(),
        }
        return make_record(obs, request_id=rid, index=index, scheduled_t=scheduled, sent_t=sent_t, meta=meta,
                           count_tokens=state.count_tokens)


def fire_events(environment: Environment, record: RequestRecord, path: str) -> None:
    """Report one request to locust: the request itself, then its metrics (measured requests only)."""
    fire: Callable[..., None] = environment.events.request.fire
    error = RuntimeError(record.error) if record.error else None
    name = f"{path} (warm-up)" if record.warmup else path
    e2e_ms = e2e(record) * 1e3
    fire(request_type="POST", name=name, response_time=e2e_ms, response_length=record.output_tokens or 0,
         exception=error, context={})  # fmt: skip
    if record.warmup or not record.ok:
        return
    first, per_token = ttft(record), tpot(record)
    values = [("ttft", first), ("tpot", per_token), ("e2e", e2e(record))]
    values += [("itl", gap) for gap in itl(record)]
    for metric, seconds in values:
        if seconds is not None:
            fire(request_type=METRIC, name=metric, response_time=seconds * 1e3, response_length=0,
                 exception=None, context={})  # fmt: skip
