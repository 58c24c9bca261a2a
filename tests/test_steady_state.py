"""The steady-state check: output tok/s in the first vs the last third of the sending window (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.load.records import RequestRecord
from bench.metrics import summarize
from bench.metrics.steady import steady_state, tokens_between


def request(i: int, sent: float, tokens: int = 5, gap: float = 0.01) -> RequestRecord:
    """A successful request whose tokens arrive ``gap`` apart from 50 ms after ``sent``."""
    times = tuple(sent + 0.05 + k * gap for k in range(tokens))
    return RequestRecord(
        request_id=f"r{i}", index=i, scheduled_t=sent, sent_t=sent, end_t=times[-1], first_token_t=times[0],
        token_times=times, output_tokens=tokens, token_count_source="usage",
    )  # fmt: skip


def test_an_even_run_is_steady() -> None:
    st = steady_state([request(i, 0.1 * i) for i in range(100)])
    assert st is not None and st.steady
    assert st.ratio == pytest.approx(1.0, abs=0.05)
    assert st.first_third_tok_s == pytest.approx(50.0, rel=0.05)  # 10 requests/s x 5 tokens


def test_a_run_that_speeds_up_is_not_steady() -> None:
    sends = [0.2 * i for i in range(25)] + [5.0 + 0.05 * i for i in range(100)]  # the first third is slow
    st = steady_state([request(i, t) for i, t in enumerate(sends)])
    assert st is not None and not st.steady and st.ratio is not None and st.ratio > 2


def test_a_window_shorter_than_three_e2e_is_not_judged() -> None:
    assert steady_state([request(i, 0.01 * i, tokens=50, gap=0.05) for i in range(10)]) is None
    assert steady_state([request(0, 0.0)]) is None


def test_warmup_and_failed_requests_are_left_out() -> None:
    warm = [dataclasses.replace(request(i, 0.01 * i, tokens=40), warmup=True) for i in range(50)]
    failed = [dataclasses.replace(request(200 + i, 0.01 * i, tokens=40), error="HTTP 500") for i in range(50)]
    st = steady_state(warm + failed + [request(100 + i, 0.1 * i) for i in range(100)])
    assert st is not None and st.steady


def test_tokens_between_is_half_open() -> None:
    r = request(0, 0.0)  # tokens at 0.05 .. 0.09
    assert tokens_between([r], 0.05, 0.07) == 2 and tokens_between([r], 0.0, 1.0) == 5


def test_summary_carries_it() -> None:
    s = summarize([request(i, 0.1 * i) for i in range(100)])
    assert s.steady_state is not None and s.steady_state.steady
