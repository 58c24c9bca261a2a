"""``POST /v1/completions``: text completion with echo and logprobs (lm-eval loglikelihood works)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from backends.base import GenRequest, TokenLogprob
from servers.errors import OpenAIError
from servers.generation import (
    Collected,
    check_model,
    check_prompt,
    collect_many,
    guard_stream,
    refuse_unsupported,
    resolve_max_tokens,
    sse,
    stream,
)
from servers.protocol import CompletionRequest, new_id, now, usage
from servers.state import AppState, Lease

DEFAULT_MAX_TOKENS = 16


def _prompts(state: AppState, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    engine = state.engine
    if isinstance(prompt, str):
        return [engine.tokenize(prompt)]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt):
        return [engine.tokenize(p) for p in prompt]  # type: ignore[arg-type]
    if all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]  # type: ignore[arg-type]
    raise OpenAIError(400, "prompt must be a string, a list of strings, or token ids", param="prompt")


def _gen_request(body: CompletionRequest, ids: list[int], max_tokens: int) -> GenRequest:
    want = body.logprobs
    return GenRequest(
        request_id=new_id("cmpl"), prompt_ids=ids, max_tokens=max_tokens,
        temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop_list,
        logprobs=want, prompt_logprobs=want if body.echo and want is not None else None,
        ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
    )


def _logprobs_block(state: AppState, ids: Sequence[int], lps: Sequence[TokenLogprob | None],
                    offset: int) -> dict[str, list[Any]]:
    engine = state.engine
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, lp in zip(ids, lps, strict=True):
        text = engine.token_text(tid)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_lps.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {engine.token_text(t): v for t, v in lp.top})
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _merge(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: a[k] + b[k] for k in a}


def _choice(state: AppState, body: CompletionRequest, ids: list[int], out: Collected, index: int,
            ) -> dict[str, Any]:
    prefix = state.engine.detokenize(ids) if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        gen = _logprobs_block(state, out.token_ids, out.logprobs, len(prefix))
        if body.echo:
            prompt_lps = list(out.prompt_logprobs or [None] * len(ids))
            logprobs = _merge(_logprobs_block(state, ids, prompt_lps, 0), gen)
        else:
            logprobs = gen
    return {"index": index, "text": prefix + out.text, "logprobs": logprobs, "finish_reason": out.finish_reason}


async def _stream_body(state: AppState, body: CompletionRequest, lease: Lease, gen: GenRequest,
                       ) -> AsyncIterator[bytes]:
    rid, created, model = gen.request_id, now(), body.model
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": rid, "object": "text_completion", "created": created, "model": model}
    completion_tokens = 0
    offset = 0
    if body.echo:
        text = state.engine.detokenize(gen.prompt_ids)
        offset = len(text)
        yield sse({**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]})
    async for chunk in stream(state, lease, gen):
        completion_tokens += len(chunk.token_ids)
        lps = None
        if body.logprobs is not None and chunk.logprobs:
            lps = _logprobs_block(state, chunk.token_ids, chunk.logprobs, offset)
        offset += len(chunk.text)
        if chunk.text or chunk.finish_reason or lps:
            choice = {"index": 0, "text": chunk.text, "logprobs": lps, "finish_reason": chunk.finish_reason}
            yield sse({**base, "choices": [choice]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": usage(len(gen.prompt_ids), completion_tokens)})
    yield sse("[DONE]")


async def create_completion(state: AppState, body: CompletionRequest, request: Request,
                            ) -> JSONResponse | StreamingResponse:
    """Handle one completion request."""
    check_model(state, body.model)
    refuse_unsupported(body.n, body.presence_penalty, body.frequency_penalty)
    prompts = _prompts(state, body.prompt)
    if body.stream and len(prompts) > 1:
        raise OpenAIError(400, "streaming supports a single prompt per request", param="prompt")
    for ids in prompts:
        check_prompt(state, ids)
    budgets = [resolve_max_tokens(state, len(ids), body.max_tokens, DEFAULT_MAX_TOKENS, "prompt") for ids in prompts]
    gens = [_gen_request(body, ids, n) for ids, n in zip(prompts, budgets, strict=True)]
    leases = state.admission.acquire(len(gens))  # all or none
    if body.stream:
        body_iter = guard_stream(_stream_body(state, body, leases[0], gens[0]))
        return StreamingResponse(body_iter, media_type="text/event-stream",
                                 background=BackgroundTask(leases[0].release))
    outs = await collect_many(state, list(zip(leases, gens, strict=True)), request)
    pairs = enumerate(zip(prompts, outs, strict=True))
    choices = [_choice(state, body, ids, out, i) for i, (ids, out) in pairs]
    return JSONResponse({
        "id": gens[0].request_id, "object": "text_completion", "created": now(), "model": body.model,
        "choices": choices,
        "usage": usage(sum(len(p) for p in prompts), sum(len(o.token_ids) for o in outs)),
    })
