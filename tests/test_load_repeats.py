"""``bench load --repeats``: the spread (pure), and repeated runs against the calibration server through the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import build_app
from bench.load.config import RepeatSpec
from bench.load.records import RequestRecord
from bench.load.repeats import read_repeats
from bench.metrics import summarize
from bench.metrics.spread import Spread, compare_spreads, repeat_spreads, spread, t_975, within_noise
from tests.helpers import scripted_server


def test_mean_std_and_t_interval() -> None:
    s = spread([1.0, 2.0, 3.0])
    assert s.n == 3 and s.mean == 2.0 and s.std == 1.0
    half = 4.303 / math.sqrt(3)
    assert s.ci95_low == pytest.approx(2.0 - half) and s.ci95_high == pytest.approx(2.0 + half)
    assert s.rel_std == 0.5 and s.values == [1.0, 2.0, 3.0]


def test_one_value_has_no_interval_and_missing_values_are_left_out() -> None:
    assert spread([None, 5.0]) == Spread(n=1, mean=5.0, values=[5.0])
    assert spread([None]) == Spread(n=0)


def test_t_quantiles() -> None:
    assert t_975(1) == 12.706 and t_975(30) == 2.042 and t_975(100) == 1.96
    with pytest.raises(ValueError, match="two values"):
        t_975(0)


def test_within_noise_when_intervals_overlap() -> None:
    a, b, far = spread([10.0, 11.0, 12.0]), spread([11.5, 12.5, 13.5]), spread([30.0, 31.0, 32.0])
    assert within_noise(a, b) is True and within_noise(b, a) is True
    assert within_noise(a, far) is False
    assert within_noise(a, spread([11.0])) is None


def record(i: int, tpot_s: float) -> RequestRecord:
    """A request with a 10 ms TTFT and 5 tokens ``tpot_s`` apart."""
    times = tuple(i + 0.01 + k * tpot_s for k in range(5))
    return RequestRecord(
        request_id=f"r{i}", index=i, scheduled_t=i, sent_t=i, end_t=times[-1], first_token_t=times[0],
        token_times=times, output_tokens=5, token_count_source="usage",
    )  # fmt: skip


def test_spreads_and_comparison_over_run_summaries() -> None:
    fast = [summarize([record(0, t), record(1, t)]) for t in (0.010, 0.011, 0.012)]
    slow = [summarize([record(0, t), record(1, t)]) for t in (0.030, 0.031, 0.032)]
    sp = repeat_spreads(fast)
    assert sp["tpot_mean_ms"].mean == pytest.approx(11.0) and sp["tpot_mean_ms"].std == pytest.approx(1.0)
    assert sp["ttft_mean_ms"].std == pytest.approx(0.0, abs=1e-9)
    assert compare_spreads(sp, repeat_spreads(slow))["tpot_mean_ms"] is False
    assert compare_spreads(sp, repeat_spreads(fast))["tpot_mean_ms"] is True


def test_warmup_runs_default_to_one_when_repeating() -> None:
    assert RepeatSpec().warmups() == 0 and not RepeatSpec().repeating
    assert RepeatSpec(repeats=3).warmups() == 1
    assert RepeatSpec(repeats=3, warmup_runs=0).warmups() == 0 and RepeatSpec(repeats=3, warmup_runs=0).repeating
    assert RepeatSpec(warmup_runs=2).repeating


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def test_repeats_through_the_cli(calib_url: str, tmp_path: Path) -> None:
    args = ["load", "--url", calib_url, "--model", "calibration", "--tokenizer", "", "--no-scrape",
            "--concurrency", "2", "--num-requests", "6", "--input-tokens", "16", "--output-tokens", "8",
            "--seed", "5", "--repeats", "3", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "95% interval" in result.output and "warm-up runs (left out)" in result.output
    got = read_repeats(tmp_path)
    assert got.repeats == 3 and got.warmup_runs == 1 and len(got.runs) == 3 and len(got.warmup) == 1
    assert all(s.num_ok == 6 for s in got.runs) and all(s.client is not None for s in got.runs)
    tput = got.spread["output_throughput_tok_s"]
    assert tput.n == 3 and tput.std is not None and tput.ci95_low is not None
    assert tput.ci95_low <= tput.mean <= tput.ci95_high  # type: ignore[operator]
    seeds = [json.loads((tmp_path / d / "load_config.json").read_text())["config"]["seed"]
             for d in ("repeat-0", "repeat-1", "repeat-2", "warmup-0")]  # fmt: skip
    assert seeds == [5, 6, 7, 8]  # every run its own prompts: no run is served from another's prefix cache
    assert not (tmp_path / "requests.jsonl").exists()


def test_bad_repeats_is_a_bad_parameter(tmp_path: Path) -> None:
    args = ["load", "--url", "http://127.0.0.1:9", "--model", "m", "--repeats", "0", "--out", str(tmp_path)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2 and "repeats" in result.output
