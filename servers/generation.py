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

from backends.base import GenChunk, GenRequest, TokenLogprob
from servers.errors import InputField, OpenAIError, as_openai_error, context_length_exceeded, model_not_found
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


def refuse_unsupported(n: int, presence: float, frequency: float) -> None:
    """Refuse sampling options the engines do not implement, instead of ignoring them."""
    if n != 1:
        raise OpenAIError(400, "n > 1 is not supported; send separate requests.", param="n")
    if presence or frequency:
        raise OpenAIError(400, "presence_penalty and frequency_penalty are not supported.",
                          param="presence_penalty" if presence else "frequency_penalty")


async def stream(state: AppState, lease: Lease, request: GenRequest) -> AsyncIterator[GenChunk]:
    """Run one request through the engine, recording server-side metrics; releases ``lease``."""
    start = time.perf_counter()
    times: list[float] = []
    reason = "abort"
    try:
        async for chunk in state.engine.generate(request):
            now = time.perf_counter()
            times.extend([now] * len(chunk.token_ids))
            if chunk.finish_reason is not None:
                reason = chunk.finish_reason
            yield chunk
    finally:
        lease.release()
        state.metrics.observe_request(times, start, time.perf_counter(), len(request.prompt_ids), reason)


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
    """Run a request to the end; a client that disconnects cancels the generation."""
    work = asyncio.ensure_future(_collect(stream(state, lease, gen), len(gen.prompt_ids)))
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work not in done:
        work.cancel()
        lease.release()
        raise OpenAIError(499, "client disconnected", code="client_closed_request")
    return work.result()


async def collect_many(state: AppState, gens: Sequence[tuple[Lease, GenRequest]], request: Request,
                       ) -> list[Collected]:
    """Several prompts of one request, run concurrently."""
    return list(await asyncio.gather(*(collect(state, lease, gen, request) for lease, gen in gens)))


async def guard_stream(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Turn an error in the middle of a stream into an SSE error event, so the client sees why it ended."""
    try:
        async for piece in body:
            yield piece
    except Exception as exc:
        log.exception("stream failed")
        err = as_openai_error(exc)
        yield sse(err.body())
        yield sse("[DONE]")


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
