"""Server-side figures cover the measured window only: warm-up requests stay out of counter deltas and energy."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bench.load.records import RequestRecord, read_records
from bench.load.runner import MEASURED_MARK, measured_server_rows, rebuild_summary, run_load_async
from bench.metrics import measured_window, summarize
from bench.metrics.server import (
    GpuRow,
    ScrapeRow,
    ServerFigures,
    server_figures,
    summarize_gpu,
    summarize_server,
    tokens_in_window,
    window_gpu_rows,
    window_rows,
)
from bench.scrape import read_server_rows
from tests.helpers import calibration_config, scripted_server

GEN = "vllm:generation_tokens_total"


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def _row(t: float, tokens: float, **extra: Any) -> ScrapeRow:
    return ScrapeRow(t=t, values={GEN: tokens, "vllm:prefix_cache_queries_total": 10 * tokens,
                                  "vllm:prefix_cache_hits_total": tokens}, **extra)


def _record(index: int, sent: float, tokens: int, warmup: bool) -> RequestRecord:
    times = tuple(sent + 0.1 + 0.1 * k for k in range(tokens))
    return RequestRecord(request_id=f"r{index}", index=index, scheduled_t=sent, sent_t=sent, end_t=times[-1],
                         first_token_t=times[0], token_times=times, closed_t=times[-1] + 0.01,
                         output_tokens=tokens, warmup=warmup)


def test_window_takes_the_samples_that_bracket_it() -> None:
    rows = [_row(0.0, 0), _row(1.0, 40), _row(1.5, 50), _row(2.0, 70), _row(3.0, 100), _row(4.0, 100)]
    window = window_rows(list(reversed(rows)), 1.2, 2.5)  # order of the file does not matter
    assert [r.t for r in window] == [1.0, 1.5, 2.0, 3.0]
    assert summarize_server(window)["server_generation_tokens"] == 60
    assert summarize_server(rows)["server_generation_tokens"] == 100
    assert [r.t for r in window_rows(rows, 1.0, 3.0)] == [1.0, 1.5, 2.0, 3.0]  # samples on the edges bound it
    assert window_rows(rows, -1.0, 9.0) == rows  # no sample outside: all of them


def test_measured_window_and_gpu_energy_leave_warm_up_out() -> None:
    records = [_record(0, 0.0, 5, warmup=True), _record(1, 1.0, 5, warmup=False), _record(2, 2.0, 5, warmup=False)]
    assert measured_window(records) == pytest.approx((1.0, 2.51))
    assert measured_window(records[:1]) is None
    window = measured_window(records)
    assert window is not None
    assert tokens_in_window(records, window) == 10
    # Two GPUs: 100 W each while the warm-up ran (0 to 1 s), 300 W each during the measured requests.
    gpu = [GpuRow(t=float(t), gpu=g, name="NVIDIA H100", mem_used_bytes=2**30, power_w=0.0,
                  energy_j=100.0 * min(t, 1) + 300.0 * max(t - 1, 0)) for t in (0, 1, 2, 3) for g in (0, 1)]
    windowed = window_gpu_rows(gpu, *window)
    assert [(r.gpu, r.t) for r in windowed] == [(0, 1.0), (0, 2.0), (0, 3.0), (1, 1.0), (1, 2.0), (1, 3.0)]
    assert summarize_gpu(windowed, 10)["joules_per_output_token"] == pytest.approx(2 * 600 / 10)
    assert summarize_gpu(gpu, 10)["joules_per_output_token"] == pytest.approx(2 * 700 / 10)  # what it was


async def test_counter_deltas_leave_the_warm_up_out(calib_url: str, tmp_path: Path) -> None:
    # Concurrency 1: the warm-up is over when the first measured request is sent, so with the boundary
    # sample the server's token counter over the window is exactly the measured requests' tokens. A long
    # scrape interval leaves only the first sample, the boundary and the last: without the boundary the
    # baseline would be the first sample, before the warm-up.
    cfg = calibration_config(calib_url, arrival={"kind": "concurrency", "n": 1}, num_requests=4, warmup=3,
                             scrape=True, scrape_interval_s=30.0)
    summary = await run_load_async(cfg, tmp_path)
    assert summary.num_ok == 4 and summary.num_warmup == 3 and summary.total_output_tokens == 4 * 16
    assert summary.server["server_generation_tokens"] == 4 * 16
    rows = read_server_rows(tmp_path / "server_metrics.jsonl")
    assert [r.mark for r in rows] == [None, MEASURED_MARK, None]
    assert rows[-1].values[GEN] - rows[0].values[GEN] == 7 * 16  # the whole run, warm-up included
    records = read_records(tmp_path / "requests.jsonl")
    first_measured = min(r.sent_t for r in records if not r.warmup)
    assert max(r.end_t for r in records if r.warmup) <= rows[1].t <= first_measured
    assert measured_server_rows(tmp_path) == rows[1:]
    assert rebuild_summary(tmp_path).server["server_generation_tokens"] == 4 * 16  # recomputed the same way
    # A second run into the same folder replaces the scrape rows, as it replaces the records.
    again = await run_load_async(cfg.model_copy(update={"warmup": 0, "num_requests": 2}), tmp_path)
    assert again.server["server_generation_tokens"] == 2 * 16
    assert [r.mark for r in read_server_rows(tmp_path / "server_metrics.jsonl")] == [None, None]


def test_mbu_divides_by_the_bandwidth_of_every_gpu_the_model_is_split_over(tmp_path: Path) -> None:
    # 8 GB of weights, one token every 100 ms on NVIDIA H200s (4,800 GB/s each): 80 GB/s is 1/60 of one GPU.
    (tmp_path / "requests.jsonl").write_text("".join(
        _record(i, float(i), 5, warmup=False).to_json() + "\n" for i in range(3)))
    (tmp_path / "gpu.jsonl").write_text("".join(
        json.dumps({"t": float(t), "gpu": 0, "name": "NVIDIA H200", "mem_used_bytes": 2**30, "power_w": 100.0,
                    "energy_j": None}) + "\n" for t in range(4)))
    for gpus, expected in ((1, 80e9 / 4800e9), (2, 80e9 / 9600e9)):
        config = calibration_config("http://127.0.0.1:9", model_bytes=8_000_000_000, server_gpus=gpus)
        summary = rebuild_summary(tmp_path, config=config)
        assert summary.server["mbu"] == pytest.approx(expected)


def test_throughput_and_server_figures_share_one_window() -> None:
    # The first measured request waited 0.5 s in the client: the window opens at its send, for the
    # throughput's duration and for the scrape rows alike.
    late = dataclasses.replace(_record(1, 1.5, 5, warmup=False), scheduled_t=1.0)
    records = [_record(0, 0.0, 5, warmup=True), late, _record(2, 2.0, 5, warmup=False)]
    window = measured_window(records)
    assert window == pytest.approx((1.5, 2.51))
    summary = summarize(records)
    assert summary.duration_s == pytest.approx(window.duration)
    rows = [_row(t, 10 * t) for t in (0.0, 1.0, 1.5, 2.0, 3.0)]
    figures = server_figures(rows, [], records, window, output_tokens=0, tpot_mean_ms=None)
    assert figures["server_generation_tokens"] == pytest.approx(30 - 15)  # from the 1.5 s sample to the 3 s one


def test_server_figures_are_typed_and_summary_json_holds_only_the_measured_ones() -> None:
    figures = ServerFigures.model_validate({"mbu": 0.25, "tpot_gap_ms": 1.5, "a_later_figure": 2.0})
    assert figures.mbu == 0.25 and figures.prefix_cache_hit_rate is None  # read by attribute
    assert figures.model_dump() == {"mbu": 0.25, "tpot_gap_ms": 1.5, "a_later_figure": 2.0}  # no nulls added
    assert figures["mbu"] == figures.get("mbu") == 0.25 and "gpu_energy_j" not in figures
    with pytest.raises(ValidationError, match="mbu"):
        ServerFigures.model_validate({"mbu": "high"})
