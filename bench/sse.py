"""The one Server-Sent-Events parser of servebench, and the OpenAI stream-chunk decoder on top of it.

Every client in the project (``bench load``, evals, tests) parses SSE through :class:`SSEDecoder`, so a
timing or framing bug is fixed once. The decoder is incremental and byte-oriented: feed it whatever the
socket returned, get back the complete ``data:`` payloads. It follows the WHATWG event-stream rules
that matter for OpenAI-compatible servers: ``\\n``, ``\\r\\n`` and ``\\r`` line ends, comment lines
(``:``), multi-line ``data`` fields joined with ``\\n``, and events ended by a blank line.

:func:`parse_openai_chunk` turns one payload into a :class:`StreamDelta`: the text it carries, how many
tokens it carries when the server says so (``logprobs``), ``usage`` and ``finish_reason``. The chunk's
shape is validated once, by the small pydantic models below: well-formed JSON of the wrong shape
(``{"choices": "x"}``, ``"content": 5``, a negative token count) becomes an error delta that names the
offending field, so a hostile or buggy server fails its own request and never the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

DONE = b"[DONE]"
# A token count in ``usage`` above this is refused: the record holds one timestamp per token, so a server
# claiming 10**12 tokens must not make the client allocate them.
MAX_USAGE_TOKENS = 1 << 20
# How much of an offending payload an error message quotes.
QUOTE_BYTES = 200
# The longest event (or unfinished line) a stream may hold; past it the stream is refused, so a server that
# never sends a line end cannot make the client buffer without bound.
MAX_EVENT_BYTES = 16 << 20


class SSEError(ValueError):
    """A stream the decoder refuses (an event past :data:`MAX_EVENT_BYTES`)."""


class SSEDecoder:
    """Incremental SSE framing: bytes in, complete ``data`` payloads (bytes) out.

    Only the ``data`` field is kept (OpenAI streams use nothing else); ``event``/``id``/``retry`` lines
    and comments are skipped.
    """

    __slots__ = ("_buf", "_data", "_size")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes read from the stream; return the payloads of every event they complete.

        Raises :class:`SSEError` when an event or an unfinished line grows past :data:`MAX_EVENT_BYTES`.
        """
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
        if len(self._buf) + self._size > MAX_EVENT_BYTES:
            raise SSEError(f"stream event longer than {MAX_EVENT_BYTES} bytes")
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
                self._size = 0
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._add_data(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            self._add_data(b"")
        # comments (":...") and other fields are ignored on purpose

    def _add_data(self, value: bytes) -> None:
        self._data.append(value)
        self._size += len(value) + 1
        if self._size > MAX_EVENT_BYTES:
            raise SSEError(f"stream event longer than {MAX_EVENT_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one OpenAI streaming chunk carries.

    ``n_tokens`` is the number of generated tokens in the chunk when the server tells us (one
    ``logprobs`` entry per token), else ``None``. ``usage`` holds the validated token counts, if any.
    """

    text: str = ""
    n_tokens: int | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None
    done: bool = False


class _Delta(BaseModel):
    """A chat ``delta``: the generated text, visible or reasoning."""

    content: str | None = None
    reasoning_content: str | None = None


class _Choice(BaseModel):
    """One choice of a chunk. ``logprobs`` is only counted, so any shape is accepted (and ignored if odd)."""

    delta: _Delta | None = None  # chat
    text: str | None = None  # completions
    logprobs: Any = None
    finish_reason: str | None = None


class _PromptDetails(BaseModel):
    """``usage.prompt_tokens_details``: the prompt tokens the server took from its prefix cache."""

    cached_tokens: int | None = Field(default=None, ge=0, le=MAX_USAGE_TOKENS)


class _Usage(BaseModel):
    """The token counts of ``usage`` (other fields are ignored)."""

    prompt_tokens: int | None = Field(default=None, ge=0, le=MAX_USAGE_TOKENS)
    completion_tokens: int | None = Field(default=None, ge=0, le=MAX_USAGE_TOKENS)
    total_tokens: int | None = Field(default=None, ge=0, le=2 * MAX_USAGE_TOKENS)
    prompt_tokens_details: _PromptDetails | None = None

    def counts(self) -> dict[str, int]:
        """The counts given, ``prompt_tokens_details.cached_tokens`` flattened to ``cached_tokens``."""
        out = self.model_dump(exclude_none=True, exclude={"prompt_tokens_details"})
        if self.prompt_tokens_details is not None and self.prompt_tokens_details.cached_tokens is not None:
            out["cached_tokens"] = self.prompt_tokens_details.cached_tokens
        return out


class _Chunk(BaseModel):
    """The fields of a streamed chunk that servebench reads; ``error``/``object``/``message`` spot error events."""

    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None
    object: Any = None
    message: Any = None


def parse_openai_chunk(payload: bytes) -> StreamDelta:
    """Decode one ``data:`` payload of ``/v1/chat/completions`` or ``/v1/completions``.

    Handles chat deltas (``content`` and ``reasoning_content``), completion ``text``, in-stream error
    objects (``{"error": ...}``, or vLLM's older ``{"object": "error", "message": ...}``) and the ``[DONE]``
    sentinel. A payload that is not JSON, or JSON of another shape, becomes an error delta: a broken
    stream is data for the record, never an exception in the request loop.
    """
    if payload == DONE:
        return StreamDelta(done=True)
    try:
        chunk = _Chunk.model_validate_json(payload)
    except ValidationError as exc:
        return StreamDelta(error=_shape_error(exc, payload))
    if chunk.error is not None:
        return StreamDelta(error=_error_text(chunk.error))
    if chunk.object == "error":
        return StreamDelta(error=_error_text(chunk.message if chunk.message is not None else "error event"))
    usage = chunk.usage.counts() if chunk.usage is not None else None
    if not chunk.choices:
        return StreamDelta(usage=usage)
    choice = chunk.choices[0]
    text = _choice_text(choice)
    return StreamDelta(text=text, n_tokens=_logprob_count(choice.logprobs), finish_reason=choice.finish_reason,
                       usage=usage)


def _shape_error(exc: ValidationError, payload: bytes) -> str:
    """One line naming the first thing wrong with a payload, and quoting the payload's start."""
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    quote = payload[:QUOTE_BYTES]
    if first["type"] == "json_invalid":
        return f"invalid JSON in stream: {quote!r}"
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return f"malformed stream chunk ({where}: {first['msg']}): {quote!r}"


def _choice_text(choice: _Choice) -> str:
    if choice.delta is not None:  # chat
        return (choice.delta.content or "") + (choice.delta.reasoning_content or "")
    return choice.text or ""


def _logprob_count(logprobs: Any) -> int | None:
    """Tokens in a chunk by its logprobs: chat's ``content`` list or completions' ``tokens`` list."""
    if not isinstance(logprobs, dict):
        return None
    entries = logprobs.get("content")
    if entries is None:
        entries = logprobs.get("tokens")
    return len(entries) if isinstance(entries, list) else None


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)[:QUOTE_BYTES * 2]
    return str(err)[:QUOTE_BYTES * 2]
