"""The one SSE parser: framing under any split of the byte stream, and OpenAI chunk decoding."""

from __future__ import annotations

import json
import random

import pytest

from bench.load.records import StreamObservation, make_record
from bench.sse import MAX_EVENT_BYTES, SSEDecoder, SSEError, parse_openai_chunk

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:nospace\r\rdata: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b"line one\nline two", b"nospace", b"[DONE]"]


def feed_all(chunks: list[bytes]) -> list[bytes]:
    dec = SSEDecoder()
    out: list[bytes] = []
    for c in chunks:
        out.extend(dec.feed(c))
    out.extend(dec.close())
    return out


def test_whole_stream() -> None:
    assert feed_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_split(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(chunks) == EXPECTED


def test_unterminated_last_event_is_dispatched_on_close() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: tail") == []
    assert dec.close() == [b"tail"]


def chat(content: str | None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None, **extra}]}).encode()


def test_chat_delta_and_logprobs_count_tokens() -> None:
    d = parse_openai_chunk(chat("ab", logprobs={"content": [{"token": "a"}, {"token": "b"}]}))
    assert (d.text, d.n_tokens) == ("ab", 2)
    assert parse_openai_chunk(chat("x")).n_tokens is None
    assert parse_openai_chunk(chat(None)).text == ""


def test_completions_text_and_logprobs() -> None:
    payload = {"choices": [{"text": "hi", "logprobs": {"tokens": ["h", "i"]}, "finish_reason": "length"}]}
    d = parse_openai_chunk(json.dumps(payload).encode())
    assert (d.text, d.n_tokens, d.finish_reason) == ("hi", 2, "length")


def test_usage_error_done_and_garbage() -> None:
    d = parse_openai_chunk(b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}')
    assert d.usage == {"prompt_tokens": 3, "completion_tokens": 9}
    assert parse_openai_chunk(b'{"error": {"message": "overloaded"}}').error == "overloaded"
    assert parse_openai_chunk(b"[DONE]").done
    assert parse_openai_chunk(b"{not json").error


HOSTILE = [
    (b'{"choices":"x"}', "choices"),
    (b'{"choices":[1]}', "choices.0"),
    (b'{"choices":[{"delta":{"content":5}}]}', "choices.0.delta.content"),
    (b'{"choices":[{"text":["a"]}]}', "choices.0.text"),
    (b'{"choices":[{"delta":{"content":"a"},"finish_reason":7}]}', "choices.0.finish_reason"),
    (b'{"usage":"x"}', "usage"),
    (b'{"usage":{"completion_tokens":-1}}', "usage.completion_tokens"),
    (b'{"usage":{"completion_tokens":1e400}}', "usage.completion_tokens"),
    (b'{"usage":{"completion_tokens":1000000000000}}', "usage.completion_tokens"),
    (b"[1]", "payload"),
    (b"null", "payload"),
]


@pytest.mark.parametrize(("payload", "where"), HOSTILE)
def test_well_formed_json_of_the_wrong_shape_is_an_error_naming_the_field(payload: bytes, where: str) -> None:
    d = parse_openai_chunk(payload)
    assert d.error is not None and d.error.startswith(f"malformed stream chunk ({where}: ")
    assert (d.text, d.usage) == ("", None)


def _random_json(rng: random.Random, depth: int = 0) -> object:
    """Any JSON value, biased towards the keys an OpenAI chunk has."""
    keys = ["choices", "delta", "content", "text", "usage", "logprobs", "tokens", "finish_reason", "error",
            "completion_tokens", "object", "message", "reasoning_content"]
    kind = rng.randrange(7 if depth < 5 else 4)
    leaves: list[object] = [None, True, rng.randint(-(2**70), 2**70), rng.random() * 1e300, "x", ""]
    if kind < 4:
        return rng.choice(leaves)
    if kind < 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_no_json_value_makes_the_parser_raise() -> None:
    """A bounded, seeded fuzz: whatever JSON a server streams, the parser returns a delta (never raises)."""
    rng = random.Random(17)
    obs = StreamObservation()
    for i in range(5000):
        delta = parse_openai_chunk(json.dumps(_random_json(rng)).encode())
        assert isinstance(delta.text, str) and (delta.usage is None or isinstance(delta.usage, dict))
        obs.add(delta, float(i))
    make_record(obs, request_id="r", index=0, scheduled_t=0.0, sent_t=0.0, meta={})  # the record is buildable
    assert parse_openai_chunk(b"[" * 100_000).error is not None  # deep nesting: no RecursionError
    assert parse_openai_chunk(b"\xff\xfe").error is not None  # not UTF-8


def test_vllm_legacy_error_event() -> None:
    assert parse_openai_chunk(b'{"object": "error", "message": "boom", "code": 400}').error == "boom"


def test_an_endless_line_or_event_is_refused_not_buffered() -> None:
    dec = SSEDecoder()
    dec.feed(b"data: " + b"x" * (MAX_EVENT_BYTES // 2))
    with pytest.raises(SSEError):
        dec.feed(b"x" * (MAX_EVENT_BYTES // 2 + 1))  # still no line end
    dec = SSEDecoder()
    line = b"data: " + b"y" * (1 << 20) + b"\n"
    with pytest.raises(SSEError):
        for _ in range(17):  # 17 MiB of data lines and never the blank line that ends the event
            dec.feed(line)
