"""One streaming request over geventhttpclient, read line by line as the bytes arrive.

Locust's ``iter_content``/``iter_lines`` helpers read fixed 1 KiB blocks and block until a block is
full, so the first token is seen late (a 20 ms TTFT read as 44 ms here). ``HTTPSocketResponse.readline``
returns as soon as one (de-chunked) line is in its buffer, and issues at most one ``recv`` per wait,
so each SSE event is timestamped when its blank line arrives. Events are framed by the one SSE parser
(:class:`bench.sse.SSEDecoder`) and noted by the same
:meth:`bench.load.records.StreamObservation.add` as :mod:`bench.load.client`; this function records times only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPSocketPoolResponse

from bench.load.records import StreamObservation
from bench.sse import SSEDecoder, parse_openai_chunk

# Bound on lines per response, so a server that never ends its stream cannot hold a user forever.
MAX_LINES = 1 << 22


def make_client(host: str, timeout_s: float) -> HTTPClient:
    """A keep-alive client for one locust user (one connection: a user has one request in flight)."""
    return HTTPClient.from_url(host, concurrency=1, network_timeout=timeout_s, connection_timeout=30.0)


def stream_request(
    client: HTTPClient,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: Callable[[], float],
) -> tuple[float, StreamObservation]:
    """POST ``body`` to ``path`` and observe the SSE stream; returns ``(sent_t, observation)``.

    Failures (refused connection, HTTP error, broken or silent stream) go into ``observation.error``.
    """
    obs = StreamObservation()
    sent_t = now()
    try:
        resp = client.request("POST", path, body=body, headers=dict(headers))
        try:
            obs.http_status = resp.status_code
            if resp.status_code != 200:
                obs.error = f"HTTP {resp.status_code}: {resp.read()[:300].decode(errors='replace')}"
            else:
                _read_stream(resp, obs, now)
        finally:
            resp.release()
    except Exception as exc:  # gevent/socket/parser errors all become data for the record
        obs.error = f"{type(exc).__name__}: {exc}"[:300]
    obs.closed_t = now()
    return sent_t, obs


def _read_stream(resp: HTTPSocketPoolResponse, obs: StreamObservation, now: Callable[[], float]) -> None:
    decoder = SSEDecoder()
    for _ in range(MAX_LINES):
        line = resp.readline(b"\n")
        if not line:
            break
        t = now()
        for payload in decoder.feed(line):
            obs.add(parse_openai_chunk(payload), t)
    else:
        obs.error = f"stream longer than {MAX_LINES} lines"
    for payload in decoder.close():
        obs.add(parse_openai_chunk(payload), now())
