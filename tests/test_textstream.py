"""Incremental detokenization and stop strings, on a scripted byte-level tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from backends.textstream import TextStream

VOCAB = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "\n", 6: "STO", 7: "P", 8: "!"}


def decode(ids: Sequence[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def utf8_decode(ids: Sequence[int]) -> str:
    # Each id is one byte; a cut multi-byte character decodes to U+FFFD, like real BPE tokenizers.
    return bytes(ids).decode("utf-8", errors="replace")


def run(stream: TextStream, ids: Sequence[int]) -> list[str]:
    deltas = [stream.push([i]) for i in ids]
    deltas.append(stream.finish())
    return deltas


def test_plain_text_streams_in_full() -> None:
    stream = TextStream(decode)
    assert "".join(run(stream, [1, 2, 3, 4])) == "Hello world"


def test_stop_string_cuts_and_never_leaks() -> None:
    stream = TextStream(decode, stop=("STOP",))
    deltas = run(stream, [1, 2, 6, 7, 8])
    assert "".join(deltas) == "Hello"
    assert stream.stopped
    assert all("STO" not in d for d in deltas)


def test_partial_stop_prefix_is_released_when_it_diverges() -> None:
    stream = TextStream(decode, stop=("STOP",))
    deltas = run(stream, [1, 6, 8])
    assert deltas[1] == ""  # "STO" could still become "STOP"
    assert "".join(deltas) == "HelSTO!"
    assert not stream.stopped


def test_multibyte_character_is_not_split() -> None:
    euro = list("€".encode())  # three bytes
    stream = TextStream(utf8_decode)
    deltas = run(stream, [ord("a"), *euro, ord("b")])
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == "a€b"


def test_earliest_of_several_stop_strings_wins() -> None:
    stream = TextStream(decode, stop=("world", "\n"))
    assert "".join(run(stream, [1, 2, 5, 3, 4])) == "Hello"
