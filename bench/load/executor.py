"""One asyncio executor: schedule requests, await them, hand each finished record to a sink.

The executor computes no metric. A worker process runs one executor over its share of the run:
open-loop timetables are computed identically in every worker from the seed, and worker ``p`` of
``P`` sends the requests whose index is ``p`` modulo ``P``; closed-loop users are split the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from bench.load.client import Sender, body_for_index, build_body, open_sender
from bench.load.clock import Clock
from bench.load.config import LoadConfig
from bench.load.conversations import Conversation, TemplateCounts
from bench.load.records import RequestRecord, make_record
from bench.load.sessions import SessionDriver
from bench.load.workloads import Prompt

Sink = Callable[[RequestRecord], None]
Hook = Callable[[], Awaitable[None]]
DEFAULT_CONNECTION_LIMIT = 4096


def share(total: int, workers: int, worker: int) -> int:
    """Worker ``worker``'s part of ``total`` in-flight requests split over ``workers`` (the parts sum to ``total``)."""
    return total // workers + (1 if worker < total % workers else 0)


@dataclass
class Job:
    """A worker's share of a run (picklable, so it can cross into a worker process).

    ``counter``, when a tokenizer is known, counts the output tokens of responses that came without ``usage`` (and a
    multi-turn reply's tokens): a :class:`bench.load.tokenizer.TokenCounter`, which crosses into a worker process
    without transformers or torch.
    """

    config: LoadConfig
    prompts: list[Prompt]
    run_id: str
    worker: int = 0
    workers: int = 1
    bodies: list[bytes] = field(default_factory=list)
    counter: Callable[[str], int] | None = None
    conversations: list[Conversation] = field(default_factory=list)  # multi-turn: the sessions' user messages
    template: TemplateCounts | None = None  # multi-turn: the chat template's tokens, for counting prompts

    def __post_init__(self) -> None:
        if not self.bodies:
            cfg = self.config
            self.bodies = [
                build_body(
                    cfg.api,
                    cfg.model,
                    p.text,
                    p.output_tokens,
                    force_output_len=cfg.force_output_len,
                    logprobs=cfg.logprobs_token_count,
                    extra=cfg.extra_body,
                )
                for p in self.prompts
            ]


class Executor:
    """Runs one :class:`Job` against the endpoint, on ``clock``, writing records to ``sink``.

    ``before_measured``, when given and the job has warm-up requests, is awaited right before the first
    measured request is sent (the runner samples the server's counters there: the warm-up boundary).
    """

    def __init__(self, job: Job, clock: Clock, sink: Sink, before_measured: Hook | None = None) -> None:
        self.job = job
        self.clock = clock
        self.sink = sink
        self.before_measured = before_measured
        cfg = job.config
        self.limit = cfg.num_requests + cfg.warmup if cfg.num_requests is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem: asyncio.Semaphore | None = None
        self._sender: Sender | None = None
        self._deadline: float | None = None
        self._count_tokens = job.counter

    async def run(self, t0: float) -> None:
        """Send every request of the job, starting at ``t0``; returns when all have finished."""
        cfg = self.job.config
        cap = cfg.arrival.in_flight_limit
        per_worker_cap = None if cap is None else share(cap, self.job.workers, self.job.worker)
        self._deadline = None if cfg.duration_s is None else t0 + cfg.duration_s
        headers = {"Content-Type": "application/json"}
        key = cfg.key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limit = per_worker_cap or DEFAULT_CONNECTION_LIMIT
        async with open_sender(limit, cfg.request_timeout_s, cfg.max_retries, headers) as sender:
            self._sender = sender
            if self.job.conversations:
                await SessionDriver(self, sender).run(t0, per_worker_cap)
            elif cfg.arrival.closed_loop:
                await self._closed_loop(t0, per_worker_cap or 1)
            else:
                if per_worker_cap is not None:
                    self._sem = asyncio.Semaphore(per_worker_cap)
                await self._open_loop(t0)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _mine(self) -> Iterator[int]:
        """Global request indices of this worker, in order."""
        return itertools.count(self.job.worker, self.job.workers)

    @property
    def count_tokens(self) -> Callable[[str], int] | None:
        """Counts output tokens of a response that came without ``usage`` (None: no tokenizer)."""
        return self._count_tokens

    def in_bounds(self, index: int, scheduled: float) -> bool:
        """Request ``index``, due at ``scheduled``, is within the run's count and duration."""
        if self.limit is not None and index >= self.limit:
            return False
        return self.in_time(scheduled)

    def in_time(self, scheduled: float) -> bool:
        """``scheduled`` is before the run's deadline (always, for a run bounded by count only)."""
        return self._deadline is None or scheduled <= self._deadline

    def _timetable(self) -> Iterator[float]:
        """Offsets of the requests from the run's start: a trace's own times, else the arrival process's."""
        if self.job.prompts and self.job.prompts[0].at_s is not None:
            return iter([p.at_s or 0.0 for p in self.job.prompts])
        return self.job.config.arrival.offsets(self.job.config.seed)

    async def _open_loop(self, t0: float) -> None:
        offsets = self._timetable()
        workers, me = self.job.workers, self.job.worker
        for index, offset in enumerate(offsets):
            if index % workers != me:
                continue
            scheduled = t0 + offset
            if not self.in_bounds(index, scheduled):
                return
            await self.clock.sleep_until(scheduled)
            task = asyncio.create_task(self._one(index, scheduled))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _closed_loop(self, t0: float, users: int) -> None:
        await self.clock.sleep_until(t0)
        indices = self._mine()

        async def user() -> None:
            while True:
                index = next(indices)
                scheduled = self.clock.now()
                if not self.in_bounds(index, scheduled):
                    return
                await self._one(index, scheduled)

        await asyncio.gather(*(user() for _ in range(users)))

    async def _one(self, index: int, scheduled: float) -> None:
        job = self.job
        prompt = job.prompts[index % len(job.prompts)]
        body = body_for_index(job.bodies, job.prompts, index)
        rid = f"{job.run_id}-{index}"
        assert self._sender is not None
        ctx = self._sem if self._sem is not None else contextlib.nullcontext()
        async with ctx:
            if job.config.warmup and index == job.config.warmup and self.before_measured is not None:
                await self.before_measured()
            sent_t, obs = await self._sender.stream(job.config.endpoint, body, self.clock.now, {"X-Request-Id": rid})
        meta = {
            "warmup": index < job.config.warmup,
            "worker": job.worker,
            "workload": job.config.workload.kind,
            **prompt.record_meta(),
        }
        record = make_record(
            obs, request_id=rid, index=index, scheduled_t=scheduled, sent_t=sent_t, meta=meta,
            count_tokens=self._count_tokens,
        )  # fmt: skip
        self.sink(record)
