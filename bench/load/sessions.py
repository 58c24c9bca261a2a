"""Multi-turn sessions in the executor: each session is one conversation, sent turn by turn.

A turn sends the whole history plus the next user message, streams the reply, appends it to the history,
and schedules the next turn a think time after the stream ended. The record of every turn carries its
``session`` and ``turn``; its ``scheduled_t`` is when the turn was due, so ``sent_t − scheduled_t`` is the
client's own lateness (a client that cannot keep up shows it there and in its event-loop lag).

Closed loop (``concurrency N``): N users, each running one session after another. Open loop: sessions start
on the arrival process's timetable (``max_concurrency`` caps the sessions open at once). Worker ``p`` of
``P`` runs the sessions whose index is ``p`` modulo ``P``; turn indices are drawn the same way.

A session takes the indices of all its turns when it starts, within the run's request count (the last session
may get fewer turns than its conversation has): the count never cuts a session in the middle, so until the last
session starts every user has one open, and a shortfall there is the client's own
(:func:`bench.metrics.sessions.achieved_sessions`). The duration bound ends the turns due after it.

The only tokenizer call on the way (counting a reply's tokens, for the record's ``counted_input_tokens``
and ``max_context_tokens``) runs in a thread during the think time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.load.client import Sender, body_fields
from bench.load.conversations import ChatHistory, Conversation, TemplateCounts, body_frame, materialize_conversations
from bench.load.records import RequestRecord, make_record
from bench.load.workloads import MultiTurnWorkload, TextBuilder

if TYPE_CHECKING:
    from bench.load.config import LoadConfig
    from bench.load.executor import Executor


def session_inputs(config: LoadConfig, builder: TextBuilder) -> tuple[list[Conversation], TemplateCounts | None]:
    """The conversations of a multi-turn run (enough for its bound) and the chat template's token counts."""
    w = config.workload
    assert isinstance(w, MultiTurnWorkload)
    users = config.arrival.in_flight_limit or 0
    count = math.ceil(config.total_requests() / w.turns) + users
    template = TemplateCounts.of(builder.tokenizer) if builder.tokenizer is not None else None
    return materialize_conversations(w, count, builder, config.seed), template


@dataclass
class _Turn:
    """What one sent turn left: its record and the reply's text."""

    record: RequestRecord
    reply: str


class SessionDriver:
    """Runs an executor's share of a multi-turn run's sessions (``executor.job.conversations``)."""

    def __init__(self, executor: Executor, sender: Sender) -> None:
        self.ex = executor
        self.job = executor.job
        self.cfg = executor.job.config
        self.sender = sender
        w = self.cfg.workload
        assert isinstance(w, MultiTurnWorkload)
        self.workload = w
        self.indices: Iterator[int] = itertools.count(self.job.worker, self.job.workers)
        self.stopped = False
        self._frames: dict[int, tuple[bytes, bytes]] = {}

    async def run(self, t0: float, cap: int | None) -> None:
        """Every session of this worker, from ``t0`` until the run's bound."""
        if self.cfg.arrival.closed_loop:
            await self._closed_loop(t0, cap or 1)
        else:
            await self._open_loop(t0, cap)

    async def _closed_loop(self, t0: float, users: int) -> None:
        await self.ex.clock.sleep_until(t0)
        sessions = itertools.count(self.job.worker, self.job.workers)

        async def user() -> None:
            while not self.stopped:
                await self.conversation(next(sessions), self.ex.clock.now())

        await asyncio.gather(*(user() for _ in range(users)))

    async def _open_loop(self, t0: float, cap: int | None) -> None:
        sem = asyncio.Semaphore(cap) if cap is not None else None
        tasks: set[asyncio.Task[None]] = set()
        for session, offset in enumerate(self.cfg.arrival.offsets(self.cfg.seed)):
            if self.stopped or not self.ex.in_time(t0 + offset):
                break
            if session % self.job.workers != self.job.worker:
                continue
            await self.ex.clock.sleep_until(t0 + offset)
            task = asyncio.create_task(self._capped(sem, session, t0 + offset))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)

    async def _capped(self, sem: asyncio.Semaphore | None, session: int, scheduled: float) -> None:
        async with sem if sem is not None else contextlib.nullcontext():
            await self.conversation(session, scheduled)

    async def conversation(self, session: int, scheduled: float) -> None:
        """One session's turns, the first due at ``scheduled``; ends early at the run's bound, on a failed turn,
        or before a turn would pass ``max_context_tokens``."""
        pool = self.job.conversations
        conv = pool[session % len(pool)]
        indices = self._reserve(len(conv.user))
        if not indices or not self.ex.in_time(scheduled):
            self.stopped = True
            return
        history = ChatHistory()
        rng = random.Random(f"{self.cfg.seed}:think:{session}")
        history.add("user", conv.first_message(session % len(pool), session), conv.user_tokens[0])
        for turn, index in enumerate(indices):
            done = await self._turn(index, session, turn, conv.output_tokens[turn], history, scheduled)
            if done is None or not done.record.ok or turn + 1 == len(indices):
                return
            counting = asyncio.ensure_future(self._count(done.reply))
            scheduled = (done.record.closed_t or done.record.end_t) + self._think(rng)
            await self.ex.clock.sleep_until(scheduled)
            history.add("assistant", done.reply, await counting)
            history.add("user", conv.user[turn + 1], conv.user_tokens[turn + 1])
            if self._too_long(history, done.record, conv.output_tokens[turn + 1]):
                return

    def _reserve(self, turns: int) -> list[int]:
        """The request indices of a new session's turns: up to ``turns``, within the run's request count."""
        taken = []
        for _ in range(turns):
            index = next(self.indices)
            if self.ex.limit is not None and index >= self.ex.limit:
                break
            taken.append(index)
        return taken

    def _frame(self, output_tokens: int) -> tuple[bytes, bytes]:
        """The request's fields around its messages, for a reply of ``output_tokens`` (made once per length)."""
        frame = self._frames.get(output_tokens)
        if frame is None:
            cfg = self.cfg
            fields = body_fields("chat", cfg.model, "", output_tokens, force_output_len=cfg.force_output_len,
                                 logprobs=cfg.logprobs_token_count, extra=cfg.extra_body)
            frame = self._frames[output_tokens] = body_frame(fields)
        return frame

    def _think(self, rng: random.Random) -> float:
        mean = self.workload.think_time_s
        if mean <= 0:
            return 0.0
        return rng.expovariate(1.0 / mean) if self.workload.think == "exponential" else mean

    async def _count(self, text: str) -> int | None:
        count = self.ex.count_tokens
        if count is None:
            return None
        return await asyncio.to_thread(count, text)

    def _prompt_tokens(self, history: ChatHistory) -> int | None:
        template = self.job.template
        if template is None or history.content_tokens is None:
            return None
        return template.prompt(history.pairs, history.content_tokens)

    def _too_long(self, history: ChatHistory, last: RequestRecord, output_tokens: int) -> bool:
        limit = self.workload.max_context_tokens
        if limit is None:
            return False
        ours = self._prompt_tokens(history)
        if ours is None:  # no tokenizer: the server's count of the last turn, its reply and the new message
            ours = (last.prompt_tokens or 0) + (last.output_tokens or 0) + (self.workload.user_tokens or 0)
        return ours + output_tokens > limit

    async def _turn(self, index: int, session: int, turn: int, output_tokens: int, history: ChatHistory,
                    scheduled: float) -> _Turn | None:
        if not self.ex.in_time(scheduled):
            self.stopped = True
            return None
        cfg = self.cfg
        if cfg.warmup and index == cfg.warmup and self.ex.before_measured is not None:
            await self.ex.before_measured()
        body = history.body(self._frame(output_tokens))
        rid = f"{self.job.run_id}-{index}"
        sent_t, obs = await self.sender.stream(cfg.endpoint, body, self.ex.clock.now, {"X-Request-Id": rid})
        counted = self._prompt_tokens(history)
        meta: dict[str, Any] = {
            "warmup": index < cfg.warmup, "worker": self.job.worker, "workload": self.workload.kind,
            "target_input_tokens": counted, "target_output_tokens": output_tokens, "counted_input_tokens": counted,
            "session": session, "turn": turn,
        }  # fmt: skip
        record = make_record(obs, request_id=rid, index=index, scheduled_t=scheduled, sent_t=sent_t, meta=meta,
                             count_tokens=self.ex.count_tokens)
        self.ex.sink(record)
        return _Turn(record, "".join(obs.chunk_texts))

