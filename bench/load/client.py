"""The request function: send one streaming request, record timestamps, compute nothing.

Chunks are timestamped once per socket read (``iter_any``): events that arrived in the same read
arrived together, and giving them one time is what lets ITL split the gap over their tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from bench.load.records import StreamObservation
from bench.load.workloads import Prompt, marker
from bench.sse import SSEDecoder, parse_openai_chunk

# Servers may close a keep-alive connection after a streamed response without saying so (llama-server
# does); the next request on it fails before the server sees it and is retried on another connection.
_STALE_CONNECTION = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)

# Large enough that one read usually holds every event the server has flushed.
READ_BUFSIZE = 1 << 18


def make_session(
    limit: int, timeout_s: float, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """An aiohttp session sized for the run: explicit connector limit and read buffer."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=30),
        read_bufsize=READ_BUFSIZE,
        headers=headers,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def stream_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    now: Callable[[], float],
    headers: dict[str, str] | None = None,
) -> tuple[float, StreamObservation]:
    """POST ``body`` to ``url`` and observe the SSE stream; returns ``(sent_t, observation)``.

    Failures (HTTP errors, broken streams, timeouts, refused connections) end up in
    ``observation.error``; only cancellation propagates.
    """
    obs = StreamObservation()
    # Every idle pooled connection may be one the server closed, and each fails once before it is dropped.
    attempts = 1 + (session.connector.limit if session.connector is not None and session.connector.limit else 64)
    for attempt in range(attempts):
        sent_t = now()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                obs.http_status = resp.status
                if resp.status != 200:
                    text = await resp.text(errors="replace")
                    obs.error = f"HTTP {resp.status}: {text[:300]}"
                else:
                    await _read_stream(resp, obs, now)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            if attempt + 1 < attempts and obs.http_status is None and isinstance(exc, _STALE_CONNECTION):
                continue  # a pooled keep-alive connection the server had closed: it never saw the request
            obs.error = f"{type(exc).__name__}: {exc}"[:300]
        break
    obs.closed_t = now()
    return sent_t, obs


async def _read_stream(
    resp: aiohttp.ClientResponse, obs: StreamObservation, now: Callable[[], float]
) -> None:
    decoder = SSEDecoder()
    async for data in resp.content.iter_any():
        t = now()
        for payload in decoder.feed(data):
            obs.add(parse_openai_chunk(payload), t)
    for payload in decoder.close():  # an event the stream ended without terminating
        obs.add(parse_openai_chunk(payload), now())


def build_body(
    api: str,
    model: str,
    text: str,
    max_tokens: int,
    *,
    force_output_len: bool,
    logprobs: bool,
    extra: dict[str, Any],
) -> bytes:
    """The JSON request body for ``/v1/chat/completions`` or ``/v1/completions``."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if api == "chat":
        body["messages"] = [{"role": "user", "content": text}]
        if logprobs:
            body["logprobs"] = True
    else:
        body["prompt"] = text
        if logprobs:
            body["logprobs"] = 0
    if force_output_len:
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    body.update(extra)
    return json.dumps(body).encode()


def body_for_index(bodies: Sequence[bytes], prompts: Sequence[Prompt], index: int) -> bytes:
    """Request ``index``'s body: its pool slot's body, with the slot's unique marker swapped for the index's.

    A run bounded only by duration cycles a pool of prepared bodies; swapping the marker (fixed
    width, so the token count does not change) keeps every request's prompt unique, so nothing
    hits a prefix cache by accident. Prompts without a marker (datasets) are sent as they are.
    """
    slot = index % len(bodies)
    tag = prompts[slot].tag
    if index == slot or not tag:
        return bodies[slot]
    return bodies[slot].replace(marker(tag, slot).encode(), marker(tag, index).encode(), 1)
