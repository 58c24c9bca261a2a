"""The one Server-Sent-Events parser of servebench, and the OpenAI stream-chunk decoder on top of it.

Every client in the project (``bench load``, evals, tests) parses SSE through :class:`SSEDecoder`, so a
timing or framing bug is fixed once. The decoder is incremental and byte-oriented: feed it whatever the
socket returned, get back the complete ``data:`` payloads. It follows the WHATWG event-stream rules
that matter for OpenAI-compatible servers: ``\\n``, ``\\r\\n`` and ``\\r`` line ends, comment lines
(``:``), multi-line ``data`` fields joined with ``\\n``, and events ended by a blank line.

:func:`parse_openai_chunk` turns one payload into a :class:`StreamDelta`: the text it carries, how many
tokens it carries when the server says so (``logprobs``), ``usage`` and ``finish_reason``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental SSE framing: bytes in, complete ``data`` payloads (bytes) out.

    Only the ``data`` field is kept (OpenAI streams use nothing else); ``event``/``id``/``retry`` lines
    and comments are skipped.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes read from the stream; return the payloads of every event they complete."""
        buf = self._buf + chunk
        if b"\r" in buf:
            # A trailing lone CR may be the first half of CRLF: keep it for the next read.
            keep_cr = buf.endswith(b"\r")
            if keep_cr:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buf += b"\r"
        out: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._line(buf[start:nl], out)
            start = nl + 1
        self._buf = buf[start:]
        return out

    def close(self) -> list[bytes]:
        """End of stream: a final event not followed by a blank line is still dispatched."""
        out: list[bytes] = []
        rest = self._buf.rstrip(b"\r")
        self._buf = b""
        if rest:
            self._line(rest, out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            self._data.append(b"")
        # comments (":...") and other fields are ignored on purpose


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one OpenAI streaming chunk carries.

    ``n_tokens`` is the number of generated tokens in the chunk when the server tells us (one
    ``logprobs`` entry per token), else ``None``. ``usage`` is the raw usage object, if any.
    """

    text: str = ""
    n_tokens: int | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    done: bool = False


def parse_openai_chunk(payload: bytes) -> StreamDelta:
    """Decode one ``data:`` payload of ``/v1/chat/completions`` or ``/v1/completions``.

    Handles chat deltas (``content`` and ``reasoning_content``), completion ``text``, in-stream error
    objects and the ``[DONE]`` sentinel. A payload that is not JSON becomes an error delta: a broken
    stream is data for the record, never an exception in the request loop.
    """
    if payload == DONE:
        return StreamDelta(done=True)
    try:
        obj = json.loads(payload)
    except ValueError:
        return StreamDelta(error=f"invalid JSON in stream: {payload[:200]!r}")
    if not isinstance(obj, dict):
        return StreamDelta(error=f"unexpected stream payload: {payload[:200]!r}")
    if "error" in obj:
        return StreamDelta(error=_error_text(obj["error"]))
    usage = obj.get("usage") or None
    choices = obj.get("choices") or ()
    if not choices:
        return StreamDelta(usage=usage)
    choice = choices[0]
    text, n_tokens = _choice_text_and_tokens(choice)
    return StreamDelta(text=text, n_tokens=n_tokens, finish_reason=choice.get("finish_reason"), usage=usage)


def _choice_text_and_tokens(choice: dict[str, Any]) -> tuple[str, int | None]:
    delta = choice.get("delta")
    if delta is not None:  # chat
        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    else:  # completions
        text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    n_tokens: int | None = None
    if isinstance(logprobs, dict):
        entries = logprobs.get("content")
        if entries is None:
            entries = logprobs.get("tokens")
        if isinstance(entries, list):
            n_tokens = len(entries)
    return text, n_tokens


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)
