"""Pure metric functions on hand-built records: definitions and invariants."""

from __future__ import annotations

import math

import pytest

from bench.load.records import RequestRecord, StreamObservation, make_record, split_tokens, token_times_from_chunks
from bench.metrics import SLO, e2e, e2e_from_schedule, itl, meets_slo, queue_time, stats_ms, summarize, tpot, ttft


def rec(chunks: list[tuple[float, int]], *, sched: float = 0.0, sent: float = 0.0, **kw: object) -> RequestRecord:
    times = token_times_from_chunks([t for t, _ in chunks], [n for _, n in chunks])
    return RequestRecord(
        request_id="r", index=0, scheduled_t=sched, sent_t=sent, end_t=times[-1],
        first_token_t=times[0], token_times=times, output_tokens=len(times), **kw,  # type: ignore[arg-type]
    )


CASES = [
    [(0.1, 1), (0.15, 1), (0.2, 1), (0.3, 1)],  # one token per chunk, uneven gaps
    [(0.05, 1), (0.1, 3), (0.2, 2), (0.21, 4)],  # multi-token chunks
    [(0.4, 3), (0.5, 1), (0.9, 5)],  # multi-token first chunk
    [(1.0, 1), (1.0, 1), (1.5, 2)],  # two chunks in one socket read
]


@pytest.mark.parametrize("chunks", CASES)
def test_invariants(chunks: list[tuple[float, int]]) -> None:
    r = rec(chunks, sched=-0.01, sent=0.0)
    gaps = itl(r)
    n = len(r.token_times)
    first = ttft(r)
    assert first is not None
    assert len(gaps) == n - 1
    assert math.isclose(e2e(r) - first, sum(gaps), abs_tol=1e-12)
    per_tok = tpot(r)
    assert per_tok is not None
    assert math.isclose(per_tok * (n - 1), e2e(r) - first, abs_tol=1e-12)
    assert math.isclose(e2e_from_schedule(r) - e2e(r), queue_time(r))


def test_definitions_on_one_record() -> None:
    r = rec([(0.1, 1), (0.2, 1), (0.4, 2)], sched=-0.05, sent=0.0)
    assert ttft(r) == pytest.approx(0.1)
    assert e2e(r) == pytest.approx(0.4)
    assert e2e_from_schedule(r) == pytest.approx(0.45)
    assert queue_time(r) == pytest.approx(0.05)
    assert tpot(r) == pytest.approx(0.3 / 3)
    # the 0.2 s gap before the two-token chunk is split per token, not reported once per chunk
    assert itl(r) == pytest.approx([0.1, 0.1, 0.1])


def test_first_chunk_extra_tokens_have_zero_gap() -> None:
    r = rec([(0.1, 3), (0.2, 1)])
    assert itl(r) == pytest.approx([0.0, 0.0, 0.1])


def test_single_token_has_no_tpot() -> None:
    r = rec([(0.1, 1)])
    assert tpot(r) is None
    assert itl(r) == []


def test_split_tokens_exact_from_logprobs() -> None:
    assert split_tokens([1, 3, 2], [4, 12, 8], total=99) == [1, 3, 2]


def test_split_tokens_from_usage_follows_text_length() -> None:
    counts = split_tokens([None, None, None], [4, 12, 4], total=7)
    assert sum(counts) == 7
    assert counts == [2, 3, 2]  # one each, then the 4 extra shared by text length (0.8, 2.4, 0.8)
    assert split_tokens([None, None], [3, 3], total=None) == [1, 1]


def test_make_record_uses_usage_and_flags_empty_stream() -> None:
    obs = StreamObservation(
        chunk_times=[1.0, 1.1], chunk_tokens=[None, None], chunk_chars=[5, 5],
        usage={"prompt_tokens": 7, "completion_tokens": 4}, closed_t=1.2, http_status=200,
    )
    r = make_record(obs, request_id="a", index=0, scheduled_t=0.9, sent_t=0.95, meta={})
    assert r.ok and r.output_tokens == 4 and r.prompt_tokens == 7 and r.token_count_source == "usage"
    assert r.token_times == (1.0, 1.0, 1.1, 1.1)
    assert r.end_t == 1.1 and r.closed_t == 1.2
    empty = make_record(StreamObservation(closed_t=2.0), request_id="b", index=1, scheduled_t=1, sent_t=1, meta={})
    assert not empty.ok and empty.error


def test_record_json_roundtrip() -> None:
    r = rec([(0.1, 2), (0.3, 1)], prompt_tokens=5)
    import json

    assert RequestRecord.from_dict(json.loads(r.to_json())) == r


def test_stats_percentiles() -> None:
    s = stats_ms([0.001 * i for i in range(1, 101)])
    assert s.n == 100
    assert s.mean == pytest.approx(50.5)
    assert s.p50 == pytest.approx(50.5)
    assert s.p99 == pytest.approx(99.01)
    assert stats_ms([]).n == 0


def test_summary_counts_goodput_and_excludes_warmup() -> None:
    fast = rec([(0.05, 1), (0.06, 1)], prompt_tokens=10)
    slow = rec([(0.5, 1), (0.6, 1)], prompt_tokens=10)
    warm = rec([(5.0, 1), (6.0, 1)], warmup=True)
    failed = RequestRecord(request_id="x", index=3, scheduled_t=0, sent_t=0, end_t=0.01, error="HTTP 500: boom")
    s = summarize([fast, slow, warm, failed], SLO(ttft_ms=100))
    assert (s.num_requests, s.num_ok, s.num_errors, s.num_warmup) == (3, 2, 1, 1)
    assert s.duration_s == pytest.approx(0.6)
    assert s.request_throughput == pytest.approx(2 / 0.6)
    assert s.output_throughput_tok_s == pytest.approx(4 / 0.6)
    assert s.goodput == pytest.approx(1 / 0.6)
    assert s.goodput_fraction == pytest.approx(1 / 3)
    assert s.errors == {"HTTP 500: boom": 1}
    assert s.ttft_ms.max == pytest.approx(500)


def test_slo_checks_each_objective() -> None:
    r = rec([(0.1, 1), (0.2, 1), (0.3, 1)], sched=-0.5)
    assert meets_slo(r, SLO(ttft_ms=150, tpot_ms=150))
    assert not meets_slo(r, SLO(tpot_ms=50))
    assert not meets_slo(r, SLO(e2e_ms=500))  # 0.8 s from the scheduled time
    assert meets_slo(r, SLO(e2e_ms=900))
