"""The request function: send one streaming request, record timestamps, compute nothing.

:class:`Sender` sends a request under a total timeout and resends it, openly, when its connection failed
before any response (the record counts the attempts and keeps the first send time).
Chunks are timestamped once per socket read (``iter_any``): events that arrived in the same read
arrived together, and giving them one time is what lets ITL split the gap over their tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ParamSpec

import aiohttp

from bench.load.records import StreamObservation
from bench.load.workloads import Prompt, marker
from bench.sse import SSEDecoder, parse_openai_chunk

P = ParamSpec("P")

# Errors of a connection that failed before any response: typically a pooled keep-alive connection the
# server had closed without saying so (llama-server closes after every stream). Only these are resent.
_STALE_CONNECTION = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)
# Errors that end a request as data in its record.
_REQUEST_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, ValueError)

# Large enough that one read usually holds every event the server has flushed.
READ_BUFSIZE = 1 << 18
# Bound on opening one TCP connection; the request's own timeout bounds everything else.
CONNECT_TIMEOUT_S = 30.0
ERROR_CHARS = 300
# Stale-connection resends after which a sender stops reusing connections (see :class:`Sender`).
STALE_LIMIT = 3

log = logging.getLogger(__name__)


def make_session(
    limit: int, headers: dict[str, str] | None = None, *, reuse: bool = True
) -> aiohttp.ClientSession:
    """An aiohttp session sized for the run: explicit connector limit and read buffer.

    ``reuse=False``: every request opens a new connection and closes it after (the resend session).
    No total timeout here: :meth:`Sender.stream` bounds each request, retries included.
    """
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300, force_close=not reuse)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        read_bufsize=READ_BUFSIZE,
        headers=headers,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


class Sender:
    """Sends streaming requests for one executor: its two sessions, the request timeout and the resend rule.

    Requests go over pooled keep-alive connections. A request whose connection fails before any response
    (:data:`_STALE_CONNECTION`: most often one the server had closed unannounced) is sent again, at most
    ``max_retries`` times, each time over a new connection from a session that never reuses one, so a
    resend cannot meet another stale connection. Nothing is resent silently: the observation counts the
    attempts and the request keeps its first send time (aiohttp itself never resends a POST).

    A server that closes its connections unannounced again and again (llama-server does after every
    streamed answer, without ``Connection: close``) would otherwise cost every other request a failed first
    attempt; after :data:`STALE_LIMIT` such resends the sender stops reusing connections for the rest of
    its run, and says so once.
    """

    def __init__(self, pooled: aiohttp.ClientSession, fresh: aiohttp.ClientSession, timeout_s: float,
                 max_retries: int) -> None:
        self.pooled = pooled
        self.fresh = fresh
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.stale_resends = 0

    @property
    def reuses_connections(self) -> bool:
        """Whether first attempts still go over pooled keep-alive connections."""
        return self.stale_resends < STALE_LIMIT

    def _count_stale(self) -> None:
        self.stale_resends += 1
        if self.stale_resends == STALE_LIMIT:
            log.warning("the server closed %d kept-alive connections without saying so; every request from now "
                        "on gets a connection of its own", STALE_LIMIT)

    async def stream(
        self, url: str, body: bytes, now: Callable[[], float], headers: dict[str, str] | None = None
    ) -> tuple[float, StreamObservation]:
        """POST ``body`` to ``url`` and observe the SSE stream; returns ``(first send time, observation)``.

        Failures (HTTP errors, broken or malformed streams, timeouts, refused connections) end up in
        ``observation.error``; only cancellation propagates. ``timeout_s`` bounds the whole request,
        from the first send to the end of the stream.
        """
        obs = StreamObservation()
        sent_t = now()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._attempts(url, body, now, headers, obs)
        except TimeoutError:
            if obs.error is None:  # an earlier error (a malformed chunk) is the cause; keep it
                obs.error = f"timed out after {self.timeout_s} s"
        obs.closed_t = now()
        return sent_t, obs

    async def _attempts(self, url: str, body: bytes, now: Callable[[], float], headers: dict[str, str] | None,
                        obs: StreamObservation) -> None:
        for attempt in range(1, self.max_retries + 2):
            obs.attempts = attempt
            session = self.pooled if attempt == 1 and self.reuses_connections else self.fresh
            try:
                await _send_once(session, url, body, now, headers, obs)
            except aiohttp.ClientConnectorError as exc:  # no connection, so nothing was sent: no resend
                obs.error = describe_error(exc)
            except _STALE_CONNECTION as exc:
                if attempt <= self.max_retries and obs.http_status is None:
                    self._count_stale()
                    continue  # the server never answered: send again over a new connection
                obs.error = describe_error(exc)
            except _REQUEST_ERRORS as exc:
                obs.error = describe_error(exc)
            return


@contextlib.asynccontextmanager
async def open_sender(limit: int, timeout_s: float, max_retries: int,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Sender]:
    """A :class:`Sender` over a pool of ``limit`` connections (and a resend session), closed on exit."""
    async with make_session(limit, headers) as pooled, make_session(limit, headers, reuse=False) as fresh:
        yield Sender(pooled, fresh, timeout_s, max_retries)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` (or the type alone when the exception has no message), cut to a record's length."""
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:ERROR_CHARS]


async def _send_once(session: aiohttp.ClientSession, url: str, body: bytes, now: Callable[[], float],
                     headers: dict[str, str] | None, obs: StreamObservation) -> None:
    async with session.post(url, data=body, headers=headers) as resp:
        obs.http_status = resp.status
        if resp.status != 200:  # only the start of the body: a hostile one may be any size
            text = (await resp.content.read(ERROR_CHARS * 4)).decode(errors="replace")
            obs.error = f"HTTP {resp.status}: {text[:ERROR_CHARS]}"
        else:
            await _read_stream(resp, obs, now)


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


def body_fields(
    api: str,
    model: str,
    text: str,
    max_tokens: int,
    *,
    force_output_len: bool,
    logprobs: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The JSON request body for ``/v1/chat/completions`` or ``/v1/completions`` as fields (a chat body holds
    ``text`` as its one user message); :func:`build_body` encodes it."""
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
    return body


def _encoded(fields: Callable[P, dict[str, Any]]) -> Callable[P, bytes]:
    """``fields`` with its result encoded as JSON bytes (same arguments, checked by mypy)."""

    def encode(*args: P.args, **kwargs: P.kwargs) -> bytes:
        return json.dumps(fields(*args, **kwargs)).encode()

    return encode


# The request body as bytes: body_fields' arguments, declared once there.
build_body = _encoded(body_fields)


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
