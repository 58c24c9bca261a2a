"""The server's own latency histograms over the measured window, and the gap to the client's figures (pure)."""

from __future__ import annotations

import pytest

from bench.metrics.client import Window
from bench.metrics.server import ScrapeRow, histogram_mean, latency_gaps, server_figures, server_latencies

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"


def hist_row(t: float, ttft: tuple[float, float], itl: tuple[float, float]) -> ScrapeRow:
    """A scrape row holding the TTFT and ITL histograms' (sum s, count)."""
    return ScrapeRow(t=t, values={TTFT + "_sum": ttft[0], TTFT + "_count": ttft[1], ITL + "_sum": itl[0],
                                  ITL + "_count": itl[1]})  # fmt: skip


def test_histogram_mean_is_the_delta_of_sum_over_the_delta_of_count() -> None:
    rows = [hist_row(0, (1.0, 10), (0.5, 100)), hist_row(1, (1.4, 12), (0.9, 180))]
    assert histogram_mean(rows, TTFT) == pytest.approx(0.2)  # 0.4 s over 2 requests
    assert histogram_mean(rows, ITL) == pytest.approx(0.005)
    assert histogram_mean(rows[:1], TTFT) is None  # one sample: no delta
    got = server_latencies(rows)
    assert got["server_ttft_mean_ms"] == pytest.approx(200.0) and got["server_itl_mean_ms"] == pytest.approx(5.0)
    assert got["server_e2e_mean_ms"] is None


def test_no_observation_in_the_window_is_no_mean() -> None:
    rows = [hist_row(0, (1.0, 10), (0.5, 100)), hist_row(1, (1.0, 10), (0.5, 100))]
    assert histogram_mean(rows, TTFT) is None


def test_gap_is_client_minus_server() -> None:
    gaps = latency_gaps({"server_ttft_mean_ms": 200.0, "server_itl_mean_ms": 5.0},
                        {"ttft": 230.0, "itl": 8.0, "tpot": 8.0})  # fmt: skip
    assert gaps == {"ttft_gap_ms": pytest.approx(30.0), "itl_gap_ms": pytest.approx(3.0), "tpot_gap_ms": None}


def test_server_figures_window_the_histograms_and_give_the_gaps() -> None:
    rows = [hist_row(0, (9.0, 90), (9.0, 900)),  # warm-up: before the window's baseline
            hist_row(10, (10.0, 100), (10.0, 1000)), hist_row(15, (10.5, 105), (10.3, 1050)),
            hist_row(20, (11.0, 110), (10.6, 1100)), hist_row(30, (99.0, 200), (99.0, 2000))]  # fmt: skip
    figures = server_figures(rows, [], [], Window(10.0, 20.0), output_tokens=0, tpot_mean_ms=7.0,
                             client_ms={"ttft": 110.0, "itl": 7.0})  # fmt: skip
    assert figures["server_ttft_mean_ms"] == pytest.approx(100.0)  # 1 s over 10 requests
    assert figures["server_itl_mean_ms"] == pytest.approx(6.0)  # 0.6 s over 100 gaps
    assert figures["ttft_gap_ms"] == pytest.approx(10.0) and figures["itl_gap_ms"] == pytest.approx(1.0)
    assert "tpot_gap_ms" not in figures  # the server sent no TPOT histogram: no gap, rather than a made-up one
