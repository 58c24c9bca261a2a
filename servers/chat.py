"""``POST /v1/chat/completions``: chat with SSE streaming and ``stream_options.include_usage``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from backends.base import GenRequest, TokenLogprob
from servers.errors import OpenAIError
from servers.generation import check_model, collect, guard_stream, refuse_unsupported, resolve_max_tokens, sse, stream
from servers.protocol import ChatCompletionRequest, new_id, now, usage
from servers.state import AppState, Lease


def _prompt_ids(state: AppState, body: ChatCompletionRequest) -> list[int]:
    try:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="messages") from None
    return state.engine.apply_chat_template(messages)


def _gen_request(body: ChatCompletionRequest, ids: list[int], max_tokens: int) -> GenRequest:
    top = (body.top_logprobs or 0) if body.logprobs else None
    return GenRequest(
        request_id=new_id("chatcmpl"), prompt_ids=ids, max_tokens=max_tokens,
        temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop_list,
        logprobs=top, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
    )


def _entry(state: AppState, token_id: int, logprob: float) -> dict[str, Any]:
    text = state.engine.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _logprobs_content(state: AppState, ids: Sequence[int], lps: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {**_entry(state, tid, lp.logprob), "top_logprobs": [_entry(state, t, v) for t, v in lp.top]}
        for tid, lp in zip(ids, lps, strict=True)
    ]


async def _stream_body(state: AppState, body: ChatCompletionRequest, lease: Lease, gen: GenRequest,
                       ) -> AsyncIterator[bytes]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base: dict[str, Any] = {"id": gen.request_id, "object": "chat.completion.chunk", "created": now(),
                            "model": body.model}
    if include_usage:
        base["usage"] = None
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    yield sse({**base, "choices": [first]})
    completion_tokens = 0
    async for chunk in stream(state, lease, gen):
        completion_tokens += len(chunk.token_ids)
        lps = None
        if body.logprobs and chunk.logprobs:
            lps = {"content": _logprobs_content(state, chunk.token_ids, chunk.logprobs)}
        if chunk.text or chunk.finish_reason or lps:
            delta = {"content": chunk.text} if chunk.text else {}
            choice = {"index": 0, "delta": delta, "logprobs": lps, "finish_reason": chunk.finish_reason}
            yield sse({**base, "choices": [choice]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": usage(len(gen.prompt_ids), completion_tokens)})
    yield sse("[DONE]")


async def create_chat_completion(state: AppState, body: ChatCompletionRequest, request: Request,
                                 ) -> JSONResponse | StreamingResponse:
    """Handle one chat completion request."""
    check_model(state, body.model)
    refuse_unsupported(body.n, body.presence_penalty, body.frequency_penalty)
    ids = _prompt_ids(state, body)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    gen = _gen_request(body, ids, resolve_max_tokens(state, len(ids), requested, None))
    [lease] = state.admission.acquire()
    if body.stream:
        return StreamingResponse(guard_stream(_stream_body(state, body, lease, gen)), media_type="text/event-stream",
                                 background=BackgroundTask(lease.release))
    out = await collect(state, lease, gen, request)
    logprobs = {"content": _logprobs_content(state, out.token_ids, out.logprobs)} if body.logprobs else None
    message = {"role": "assistant", "content": out.text}
    return JSONResponse({
        "id": gen.request_id, "object": "chat.completion", "created": now(), "model": body.model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": out.finish_reason}],
        "usage": usage(len(ids), len(out.token_ids)),
    })
