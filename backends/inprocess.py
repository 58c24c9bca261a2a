"""What every in-process engine shares: one worker thread owns the model; requests arrive on a
thread-safe inbox and stream back through asyncio queues; tokenizer helpers; failure handling.

A subclass loads its model (``_load``), turns a request into its own :class:`Pending` (``_pending``) and
runs the scheduling loop (``_loop``) over ``self._active`` until ``self._stopping`` is set.

When the loop raises, the worker thread is dead: every running and waiting request ends with an
:class:`EngineDeadError` that says why, and so does every later request (the server answers 503). An error
in one scheduler step fails only the requests of that step, unless :func:`is_fatal` says the device itself
is broken, in which case the loop re-raises it and the engine dies.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from backends.base import Capabilities, EngineOptions, GenChunk, GenRequest, check_prompt_ids
from backends.errors import EngineDeadError
from backends.textstream import TextStream

log = logging.getLogger("servebench.engine")


@dataclass(eq=False)
class Pending:
    """A request while it is in the engine; the worker thread owns it, except ``aborted``."""

    req: GenRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[GenChunk | BaseException]
    text: TextStream
    aborted: bool = False
    # When the scheduler started the request (``time.perf_counter``; set by the worker before the first chunk).
    started_t: float | None = None

    def send(self, item: GenChunk | BaseException) -> None:
        """Hand a chunk (or the error that ends the stream) to the request's event loop."""
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def mark_started(self) -> None:
        """The scheduler starts this request now (its prefill begins): the end of its queue time."""
        if self.started_t is None:
            self.started_t = time.perf_counter()


PendingT = TypeVar("PendingT", bound=Pending)


def is_fatal(exc: BaseException) -> bool:
    """Whether an error in a scheduler step leaves the engine unable to serve anything.

    A CUDA error (``torch.AcceleratorError``: an illegal memory access, a device-side assert) poisons the
    device context, so every later step would fail too: the engine must die, not keep answering 500s
    while ``/health`` says 200. Any other error is the affected requests' alone.
    """
    return isinstance(exc, torch.AcceleratorError)


def top_logprobs(row: torch.Tensor, k: int) -> tuple[tuple[int, float], ...]:
    """The ``k`` most likely tokens of a log-probability row."""
    if k <= 0:
        return ()
    values, ids = torch.topk(row, k)
    return tuple(zip(ids.tolist(), values.tolist(), strict=True))


class WorkerEngine(ABC, Generic[PendingT]):
    """Base of the in-process engines (see the module docstring)."""

    name: str
    capabilities: Capabilities

    def __init__(self, model_name: str, path: Path, fmt: str, options: EngineOptions,
                 tokenizer_path: Path | None = None, draft_path: Path | None = None) -> None:
        self.model_name = model_name
        self.path = path
        self.format = fmt
        self.options = options
        self.tokenizer_path = tokenizer_path
        self.draft_path = draft_path
        self.max_model_len = options.max_model_len or 0
        self.tokenizer: Any = None
        self._inbox: queue.Queue[PendingT] = queue.Queue()
        self._active: list[PendingT] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dead: BaseException | None = None
        # Set (under _closing) once the worker has ended; after that nothing may enter the inbox, because
        # nothing would ever answer it.
        self._closed = False
        self._closing = threading.Lock()

    # ---- what each engine supplies -----------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Load tokenizer and model; set ``max_model_len``."""

    @abstractmethod
    def _pending(self, request: GenRequest, fields: dict[str, Any]) -> PendingT:
        """This engine's :class:`Pending` for ``request`` (``fields`` holds the base fields)."""

    @abstractmethod
    def _loop(self) -> None:
        """Admit and advance requests until ``self._stopping`` is set (runs on the worker thread)."""

    def _reset(self) -> None:
        """Drop engine state tied to the running requests after they were failed."""

    def _in_flight(self) -> list[PendingT]:
        """Every request the worker has taken from the inbox and not yet ended (the running batch by default)."""
        return list(self._active)

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must lie in ``0..vocab_size-1``: the tokenizer's size, added tokens included."""
        return len(self.tokenizer) if self.tokenizer is not None else 0

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model and start the worker thread."""
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._worker, name=f"{self.name}-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker; requests still running are aborted."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def check_alive(self) -> None:
        """Raise :class:`EngineDeadError` if the worker thread died (or has stopped)."""
        if self._dead is not None or self._closed:
            raise self._ended()

    def _ended(self) -> EngineDeadError:
        """The error that ends requests once the worker is gone: why it died, or that it was stopped."""
        if self._dead is None:
            return EngineDeadError(f"the {self.name} engine has stopped: the server is shutting down")
        cause = f"{type(self._dead).__name__}: {self._dead}" if str(self._dead) else type(self._dead).__name__
        return EngineDeadError(f"the {self.name} engine died ({cause}); this server cannot generate any more: "
                               "restart it")

    # ---- requests --------------------------------------------------------------------------------
    async def generate(self, request: GenRequest) -> AsyncIterator[GenChunk]:
        """Stream chunks for ``request``; closing the iterator aborts it.

        Raises :class:`EngineDeadError` at once if the worker is gone, and ends the stream with it if the
        worker dies while the request runs or waits. A prompt no model could run (empty, or an id outside the
        vocabulary) raises :class:`~backends.errors.InvalidRequestError` before it reaches the worker.
        """
        self.check_alive()
        check_prompt_ids(request.prompt_ids, self.vocab_size)
        fields = {"req": request, "loop": asyncio.get_running_loop(), "out": asyncio.Queue(),
                  "text": TextStream(self.detokenize, request.stop)}
        pending = self._pending(request, fields)
        with self._closing:  # the worker drains the inbox after closing, so a request is answered either way
            self.check_alive()
            self._inbox.put(pending)
        first = True
        try:
            while True:
                item = await pending.out.get()
                if isinstance(item, BaseException):
                    raise item
                if first and pending.started_t is not None:  # the worker set it before it sent this chunk
                    item = replace(item, started_t=pending.started_t)
                first = False
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            pending.aborted = True

    # ---- worker thread ---------------------------------------------------------------------------
    def _worker(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as exc:  # the worker must never die silently
            log.exception("%s engine worker died", self.name)
            self._dead = exc
        finally:
            with self._closing:
                self._closed = True
            self._fail_all(self._ended())

    def _take(self, block: bool, room: int | None = None) -> list[PendingT]:
        """New requests from the inbox (at most ``room``), waiting briefly when ``block``."""
        taken: list[PendingT] = []
        try:
            if block:
                taken.append(self._inbox.get(timeout=0.05))
            while room is None or len(taken) < room:
                taken.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return [p for p in taken if not p.aborted]

    def _fail_all(self, exc: BaseException) -> None:
        """End every running and waiting request with ``exc``."""
        for pending in self._in_flight():
            pending.send(exc)
        self._active = []
        self._reset()
        while True:
            try:
                self._inbox.get_nowait().send(exc)
            except queue.Empty:
                return

    # ---- tokenizer -------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def token_text(self, token_id: int) -> str:
        """The text of one token, as OpenAI's ``logprobs.tokens`` shows it."""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Prompt ids for a chat, with the generation prompt."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenize(str(text), add_special_tokens=False)
