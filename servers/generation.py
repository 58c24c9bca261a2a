"""The glue between HTTP requests and the engine: admission, limits, metrics, disconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from backends.base import GenChunk, GenRequest, TokenLogprob, check_prompt_ids
from backends.errors import InvalidRequestError
from servers.errors import (
    InputField,
    OpenAIError,
    as_openai_error,
    context_length_exceeded,
    log_failure,
    model_not_found,
)
from servers.state import AppState, Lease

log = logging.getLogger("servebench.server")


def check_model(state: AppState, model: str) -> None:
    """404 unless ``model`` is the one this server serves."""
    if model != state.settings.served_model_name:
        raise model_not_found(model)


def resolve_max_tokens(state: AppState, prompt_len: int, requested: int | None, default: int | None,
                       input_field: InputField = "messages") -> int:
    """The output budget, refusing a prompt plus budget over the context window (400 naming ``input_field``)."""
    limit = state.engine.max_model_len
    wanted = requested if requested is not None else default
    if wanted is None:
        wanted = limit - prompt_len
    if prompt_len + max(wanted, 0) > limit or prompt_len >= limit:
        raise context_length_exceeded(limit, prompt_len, max(wanted, 0), input_field)
    return wanted


def check_prompt(state: AppState, ids: list[int]) -> None:
    """400 for a prompt the engine cannot run (empty, or a token id outside its vocabulary), before admission."""
    try:
        check_prompt_ids(ids, state.engine.vocab_size)
    except InvalidRequestError as exc:
        raise OpenAIError(400, str(exc), param="prompt") from None


def refuse_unsupported(n: int, presence: float, frequency: float) -> None:
    """Refuse sampling options the engines do not implement, instead of ignoring them."""
    if n != 1:
        raise OpenAIError(400, "n > 1 is not supported; send separate requests.", param="n")
    if presence or frequency:
        raise OpenAIError(400, "presence_penalty and frequency_penalty are not supported.",
                          param="presence_penalty" if presence else "frequency_penalty")


async def stream(state: AppState, lease: Lease, request: GenRequest) -> AsyncIterator[GenChunk]:
    """Run one request through the engine, recording server-side metrics; releases ``lease``."""
    start = time.perf_counter()  # the request's arrival at the engine: its queue time starts here
    times: list[float] = []
    reason = "abort"
    started: float | None = None
    try:
        async for chunk in state.engine.generate(request):
            now = time.perf_counter()
            times.extend([now] * len(chunk.token_ids))
            started = started if chunk.started_t is None else chunk.started_t
            if chunk.finish_reason is not None:
                reason = chunk.finish_reason
            yield chunk
    finally:
        lease.release()
        state.metrics.observe_request(times, start, time.perf_counter(), len(request.prompt_ids), reason, started)


@dataclass
class Collected:
    """A whole (non-streamed) generation."""

    prompt_len: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: Sequence[TokenLogprob | None] | None = None
    finish_reason: str = "length"


async def _collect(chunks: AsyncIterator[GenChunk], prompt_len: int) -> Collected:
    out = Collected(prompt_len=prompt_len)
    parts: list[str] = []
    async for chunk in chunks:
        parts.append(chunk.text)
        out.token_ids.extend(chunk.token_ids)
        if chunk.logprobs:
            out.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs is not None:
            out.prompt_logprobs = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            out.finish_reason = chunk.finish_reason
    out.text = "".join(parts)
    return out


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect(state: AppState, lease: Lease, gen: GenRequest, request: Request) -> Collected:
    """Run one request to the end; a client that disconnects cancels the generation."""
    return (await collect_many(state, [(lease, gen)], request))[0]


async def collect_many(state: AppState, gens: Sequence[tuple[Lease, GenRequest]], request: Request,
                       ) -> list[Collected]:
    """Run the prompts of one request concurrently to the end.

    If one fails, or the client disconnects, the others are cancelled (and give their slots back) at once.
    """
    tasks = [asyncio.ensure_future(_collect(stream(state, lease, gen), len(gen.prompt_ids))) for lease, gen in gens]
    work = asyncio.gather(*tasks)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    racing: list[asyncio.Future[Any]] = [work, watcher]
    try:
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            raise OpenAIError(499, "client disconnected", code="client_closed_request")
        return list(work.result())
    finally:
        watcher.cancel()
        for task in tasks:
            task.cancel()
        for lease, _ in gens:
            lease.release()
        if work.done() and not work.cancelled():
            work.exception()  # retrieved, so that asyncio does not log it again


async def guard_stream(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Turn an error in the middle of a stream into an SSE error event, so the client sees why it ended."""
    try:
        async for piece in body:
            yield piece
    except Exception as exc:
        err = as_openai_error(exc)
        log_failure(err, exc, "stream")
        yield sse(err.body())
        yield sse("[DONE]")


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
