"""``RequestRecord``: what one request did, on the run's monotonic clock, and its JSONL file.

Request functions only record timestamps (:class:`StreamObservation`); :func:`make_record` turns the
observation into a record once the request is over. Records are appended to ``requests.jsonl`` with one
``os.write`` per line on an ``O_APPEND`` descriptor, so a SIGKILL loses at most the requests in flight
and several worker processes can share the file without interleaving lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from backends import archived

if TYPE_CHECKING:
    from bench.sse import StreamDelta

TokenCountSource = Literal["usage", "logprobs", "chunks", "retokenized", "none"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request. Times are seconds on the run's clock (``time.perf_counter``, CLOCK_MONOTONIC).

    ``token_times`` has one entry per output token: the arrival time of the chunk that carried it.
    ``end_t`` is the arrival of the last token (the end of E2E); ``closed_t`` is when the stream
    ended (after the trailing usage chunk and ``[DONE]``). A failed request has ``error`` set.
    ``sent_t`` is the first send; ``attempts`` > 1 says the request was sent again after its connection
    failed before any response (see :class:`bench.load.client.Sender`).
    """

    request_id: str
    index: int
    scheduled_t: float
    sent_t: float
    end_t: float
    first_token_t: float | None = None
    token_times: tuple[float, ...] = ()
    closed_t: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_count_source: TokenCountSource = "none"
    n_chunks: int = 0
    http_status: int | None = None
    error: str | None = None
    attempts: int = 1
    warmup: bool = False
    worker: int = 0
    workload: str = ""
    target_input_tokens: int | None = None
    target_output_tokens: int | None = None
    counted_input_tokens: int | None = None  # our tokenizer's count (chat template included), where exact
    cached_tokens: int | None = None  # prompt tokens the server took from its prefix cache (its usage says so)
    session: int | None = None  # multi-turn: the conversation this request is a turn of
    turn: int | None = None  # multi-turn: the turn's index in its conversation, from 0

    @property
    def ok(self) -> bool:
        """The request completed without error and produced at least one token."""
        return self.error is None and self.first_token_t is not None

    def to_json(self) -> str:
        """One JSONL line (no trailing newline)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RequestRecord:
        """Inverse of :meth:`to_json`; unknown keys are ignored so old readers survive new fields."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        data["token_times"] = tuple(data.get("token_times") or ())
        return cls(**data)


@dataclass(slots=True)
class StreamObservation:
    """Raw timestamps a request function collects; nothing is computed while the request runs."""

    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int | None] = field(default_factory=list)
    chunk_chars: list[int] = field(default_factory=list)
    chunk_texts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    closed_t: float | None = None
    http_status: int | None = None
    error: str | None = None
    attempts: int = 1

    def add(self, delta: StreamDelta, t: float) -> None:
        """Note one parsed SSE event that arrived at ``t`` (both engines' stream readers call this).

        The first error of a stream is kept: it is the cause, later ones are its consequences.
        """
        if delta.text or delta.n_tokens:
            self.chunk_times.append(t)
            self.chunk_tokens.append(delta.n_tokens)
            self.chunk_chars.append(len(delta.text))
            self.chunk_texts.append(delta.text)  # kept for retokenizing when the server sends no usage
        if delta.usage is not None:
            self.usage = delta.usage
        if delta.error is not None and self.error is None:
            self.error = delta.error


def split_tokens(
    chunk_tokens: Sequence[int | None], chunk_chars: Sequence[int], total: int | None
) -> list[int]:
    """How many tokens each content chunk carried.

    Exact when every chunk reported its tokens (logprobs). Otherwise each chunk counts one token, and
    if the server's ``usage`` says ``total`` differs, the total is shared out over the chunks in
    proportion to their text length (largest remainder, at least one token per chunk).
    """
    if chunk_tokens and all(n is not None for n in chunk_tokens):
        return [int(n) for n in chunk_tokens if n is not None]
    counts = [1] * len(chunk_chars)
    if total is None or total == len(counts) or not counts:
        return counts
    if total < len(counts):
        return counts  # cannot give a chunk less than one token; usage stays authoritative for N
    extra = total - len(counts)
    weight = sum(chunk_chars) or len(counts)
    shares = [extra * (c if sum(chunk_chars) else 1) / weight for c in chunk_chars]
    floors = [int(s) for s in shares]
    left = extra - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: shares[i] - floors[i], reverse=True)
    for i in order[:left]:
        floors[i] += 1
    return [c + f for c, f in zip(counts, floors, strict=True)]


def token_times_from_chunks(chunk_times: Sequence[float], counts: Sequence[int]) -> tuple[float, ...]:
    """Repeat each chunk's arrival time once per token it carried."""
    out: list[float] = []
    for t, n in zip(chunk_times, counts, strict=True):
        out.extend([t] * n)
    return tuple(out)


def output_token_total(
    obs: StreamObservation, count_tokens: Callable[[str], int] | None = None
) -> tuple[int | None, TokenCountSource]:
    """How many output tokens the response had, and where that number comes from.

    In order: the server's ``usage``; ``logprobs`` entries per chunk (``None``: the per-chunk counts
    are exact); ``count_tokens`` over the streamed text (``retokenized``); otherwise ``chunks`` (one
    token per content chunk, ``None``), or ``none`` when nothing was streamed.
    """
    usage_out = _int_or_none((obs.usage or {}).get("completion_tokens"))
    if usage_out is not None:
        return usage_out, "usage"
    if not obs.chunk_times:
        return None, "none"
    if obs.chunk_tokens and all(n is not None for n in obs.chunk_tokens):
        return None, "logprobs"
    if count_tokens is not None and obs.chunk_texts:
        return count_tokens("".join(obs.chunk_texts)), "retokenized"
    return None, "chunks"


# How each fallback counted output tokens, for the end-of-run warning.
_SOURCE_NOTES = MappingProxyType({
    "logprobs": "from logprobs (exact)",
    "retokenized": "by retokenizing the streamed text with the tokenizer (close, not exact)",
    "chunks": "as one token per chunk (an undercount when chunks carry several tokens; give --tokenizer)",
})


def token_source_warning(sources: dict[str, int]) -> str | None:
    """One line saying how many successful requests came without ``usage`` and how they were counted."""
    fallback = {k: n for k, n in sources.items() if k != "usage"}
    if not fallback:
        return None
    ways = "; ".join(f"{n} {_SOURCE_NOTES.get(k, k)}" for k, n in sorted(fallback.items()))
    total = sum(sources.values())
    return f"the server sent no usage for {sum(fallback.values())} of {total} requests; output tokens counted: {ways}"


def make_record(
    obs: StreamObservation,
    *,
    request_id: str,
    index: int,
    scheduled_t: float,
    sent_t: float,
    meta: dict[str, Any],
    count_tokens: Callable[[str], int] | None = None,
) -> RequestRecord:
    """Build the record of a finished request from its observation.

    Pure but for ``count_tokens`` (a tokenizer), which is used only when the server sent no usage.
    """
    usage = obs.usage or {}
    total, source = output_token_total(obs, count_tokens)
    counts = split_tokens(obs.chunk_tokens, obs.chunk_chars, total)
    times = token_times_from_chunks(obs.chunk_times, counts)
    output_tokens = total if source == "usage" else (len(times) or None)
    if not times:
        source = "none"
    error = obs.error
    if error is None and not times:
        error = "stream ended without a content token"
    end_t = times[-1] if times else (obs.closed_t if obs.closed_t is not None else sent_t)
    return RequestRecord(
        request_id=request_id,
        index=index,
        scheduled_t=scheduled_t,
        sent_t=sent_t,
        end_t=end_t,
        first_token_t=times[0] if times else None,
        token_times=times,
        closed_t=obs.closed_t,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        cached_tokens=_int_or_none(usage.get("cached_tokens")),
        output_tokens=output_tokens,
        token_count_source=source,
        n_chunks=len(obs.chunk_times),
        http_status=obs.http_status,
        error=error,
        attempts=obs.attempts,
        **meta,
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


class JsonlAppender:
    """Appends records to a JSONL file, one unbuffered ``write`` per line (SIGKILL-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: RequestRecord) -> None:
        """Append one record as a complete line."""
        os.write(self._fd, (record.to_json() + "\n").encode())

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: Path) -> Iterator[RequestRecord]:
    """Read records back (from ``requests.jsonl.gz`` where only that exists: :mod:`backends.archived`); a
    truncated last line (the process was killed mid-write) is skipped."""
    for line in archived.read_bytes(path).splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        yield RequestRecord.from_dict(raw)


def read_records(path: Path) -> list[RequestRecord]:
    """All complete records of a ``requests.jsonl`` file."""
    return list(iter_records(path))
