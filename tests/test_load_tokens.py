"""Output-token counting when the server sends no ``usage``: retokenizing, the chunk fallback, the warning."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bench.load.records import RequestRecord, StreamObservation, make_record, read_records, token_source_warning
from bench.load.runner import run_load_async
from bench.load.tokenizer import Tokenizer
from tests.helpers import calibration_config, scripted_server

NO_USAGE = {"stream_options": {"include_usage": False}}
BUNDLED = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def chunky_url() -> Iterator[str]:
    """16 tokens per response in chunks of 1, 4, 4, 4, 3."""
    yield from scripted_server(tokens_per_chunk=4)


def observation(texts: list[str], usage: dict[str, int] | None = None) -> StreamObservation:
    times = [0.1 * (k + 1) for k in range(len(texts))]
    return StreamObservation(
        chunk_times=times, chunk_tokens=[None] * len(texts), chunk_chars=[len(t) for t in texts],
        chunk_texts=list(texts), usage=usage, closed_t=times[-1] + 0.01, http_status=200,
    )  # fmt: skip


def record_of(obs: StreamObservation, count: object = None) -> tuple[int, str]:
    r = make_record(obs, request_id="r", index=0, scheduled_t=0.0, sent_t=0.0, meta={},
                    count_tokens=count)  # type: ignore[arg-type]  # fmt: skip
    return len(r.token_times), r.token_count_source


def test_sources_in_order_of_authority() -> None:
    words = [" a b", " c d e", " f"]
    assert record_of(observation(words, {"completion_tokens": 7})) == (7, "usage")
    assert record_of(observation(words, {"completion_tokens": 7}), lambda t: 99) == (7, "usage")
    assert record_of(observation(words), lambda t: len(t.split())) == (6, "retokenized")
    assert record_of(observation(words)) == (3, "chunks")


def test_warning_names_every_fallback() -> None:
    assert token_source_warning({"usage": 5}) is None
    note = token_source_warning({"usage": 5, "chunks": 3, "retokenized": 2})
    assert note is not None
    assert "no usage for 5 of 10 requests" in note
    assert "3 as one token per chunk" in note and "2 by retokenizing" in note


async def test_no_usage_without_tokenizer_counts_chunks_and_warns_once(chunky_url: str, tmp_path: Path) -> None:
    cfg = calibration_config(chunky_url, arrival={"kind": "concurrency", "n": 2}, num_requests=6, extra_body=NO_USAGE)
    out = io.StringIO()
    s = await run_load_async(cfg, tmp_path, Console(file=out, width=300))
    assert s.num_ok == 6
    assert s.token_count_sources == {"chunks": 6}
    assert s.total_output_tokens == 6 * 5  # 16 tokens arrived in 5 chunks: the fallback undercounts
    text = out.getvalue()
    assert text.count("no usage") == 1
    assert "no usage for 6 of 6 requests" in text and "6 as one token per chunk" in text
    assert "chunks 6" in text  # the summary table shows the sources


async def test_no_usage_with_tokenizer_retokenizes(
    chunky_url: str, bundled_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    cfg = calibration_config(
        chunky_url, arrival={"kind": "concurrency", "n": 2}, num_requests=6, extra_body=NO_USAGE, tokenizer=BUNDLED
    )
    out = io.StringIO()
    s = await run_load_async(cfg, tmp_path, Console(file=out, width=300))
    assert s.token_count_sources == {"retokenized": 6}
    assert s.total_output_tokens == 6 * 16  # " tok" x 16 is 16 tokens of the bundled tokenizer
    records = read_records(tmp_path / "requests.jsonl")
    assert all(r.output_tokens == 16 and r.n_chunks == 5 for r in records)
    assert out.getvalue().count("no usage") == 1


async def test_usage_is_preferred_and_silent(chunky_url: str, bundled_tokenizer: Tokenizer, tmp_path: Path) -> None:
    cfg = calibration_config(chunky_url, arrival={"kind": "concurrency", "n": 2}, num_requests=4, tokenizer=BUNDLED)
    out = io.StringIO()
    s = await run_load_async(cfg, tmp_path, Console(file=out, width=300))
    assert s.token_count_sources == {"usage": 4} and s.total_output_tokens == 4 * 16
    assert "no usage" not in out.getvalue()


async def test_a_server_that_counts_prompts_otherwise_is_flagged(chunky_url: str, bundled_tokenizer: Tokenizer,
                                                                 tmp_path: Path) -> None:
    """The calibration server counts a prompt's whitespace words, not the model's tokens: a tokenizer mismatch."""
    cfg = calibration_config(chunky_url, arrival={"kind": "concurrency", "n": 2}, num_requests=4, tokenizer=BUNDLED)
    out = io.StringIO()
    s = await run_load_async(cfg, tmp_path, Console(file=out, width=400))
    check = s.prompt_tokens_check
    assert check is not None and check.checked == 4 and check.mismatch and check.ours == 4 * 16
    assert check.ours != check.server
    assert "prompts' lengths are not what the server sees" in out.getvalue()


def test_prompt_token_check_tolerates_two_percent() -> None:
    from bench.metrics.prompt_check import prompt_token_check

    def rec(index: int, ours: int | None, server: int) -> RequestRecord:
        return RequestRecord(request_id=str(index), index=index, scheduled_t=0.0, sent_t=0.0, end_t=1.0,
                             first_token_t=0.5, prompt_tokens=server, counted_input_tokens=ours)

    assert prompt_token_check([rec(0, None, 100)]) is None  # no exact count of ours: nothing to compare
    close = prompt_token_check([rec(0, 100, 100), rec(1, 98, 100)])
    assert close is not None and not close.mismatch and close.checked == 2
    off = prompt_token_check([rec(0, 100, 100), rec(1, 90, 100)])
    assert off is not None and off.mismatch and off.max_diff_fraction == pytest.approx(0.1)
