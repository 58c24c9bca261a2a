"""The one SSE parser: framing under any split of the byte stream, and OpenAI chunk decoding."""

from __future__ import annotations

import json

import pytest

from bench.sse import SSEDecoder, parse_openai_chunk

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
