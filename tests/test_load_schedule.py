"""Load that changes over time, pure parts: the rate schedule's text form, its timetable, the time series and
the latency knee (scripted records, no server)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.load.arrivals import RateSchedule, ScheduleArrival
from bench.load.records import RequestRecord, read_records
from bench.load.runner import run_load
from bench.metrics import SLO
from bench.metrics.timeseries import TimeSeries, latency_knee, time_series
from tests.helpers import calibration_config, moderate_load, scripted_server


def _times(arrival: ScheduleArrival, n: int, seed: int = 0) -> list[float]:
    return list(itertools.islice(arrival.offsets(seed), n))


def test_text_form_of_steps_and_ramps() -> None:
    steps = RateSchedule.model_validate("0:5,60:20,120:40")
    assert [(p.at_s, p.rate) for p in steps.points] == [(0, 5), (60, 20), (120, 40)]
    assert not steps.ramp
    ramp = RateSchedule.model_validate("ramp:0:5,120:40")
    assert ramp.ramp and ramp.describe() == "ramp:0:5,120:40"
    for bad, why in (("5:1", "starts at 0"), ("0:1,10:2,5:3", "increase"), ("0:1,10", "AT:RATE"),
                     ("0:5,10:0", "last rate")):
        with pytest.raises(ValidationError, match=why):
            RateSchedule.model_validate(bad)


def test_each_step_sends_exactly_rate_times_its_length() -> None:
    times = _times(ScheduleArrival(schedule=RateSchedule.model_validate("0:5,60:20,120:40")), 2000)
    assert sum(t < 60 for t in times) == 300
    assert sum(60 <= t < 120 for t in times) == 1200
    assert times[300] == 60.0  # the first request of a step goes at its start
    assert times[1] - times[0] == pytest.approx(0.2) and times[301] - times[300] == pytest.approx(0.05)


def test_a_ramp_follows_the_integrated_rate() -> None:
    arrival = ScheduleArrival(schedule=RateSchedule.model_validate("ramp:0:0,10:10"))  # rate t: t²/2 requests by t
    times = _times(arrival, 200)
    assert times[:3] == pytest.approx([0.0, 2**0.5, 2.0])
    assert sum(t < 10 for t in times) == 50
    assert sum(10 <= t < 11 for t in times) == 10  # then 10/s held
    assert arrival.schedule.rate_at(5) == 5 and arrival.schedule.rate_at(30) == 10


def test_a_pause_and_a_poisson_schedule() -> None:
    assert _times(ScheduleArrival(schedule=RateSchedule.model_validate("0:0,5:2")), 3) == [5.0, 5.5, 6.0]
    times = _times(ScheduleArrival(schedule=RateSchedule.model_validate("0:5,60:20"), process="poisson"), 3000, seed=3)
    assert 300 * 0.8 < sum(t < 60 for t in times) < 300 * 1.2
    assert 1200 * 0.9 < sum(60 <= t < 120 for t in times) < 1200 * 1.1


def _record(i: int, sent: float, ttft_s: float, tokens: int = 5, gap: float = 0.01) -> RequestRecord:
    first = sent + ttft_s
    times = tuple(first + k * gap for k in range(tokens))
    return RequestRecord(request_id=str(i), index=i, scheduled_t=sent, sent_t=sent, end_t=times[-1],
                         first_token_t=first, token_times=times, output_tokens=tokens)


def test_time_series_and_knee_from_scripted_records() -> None:
    arrival = ScheduleArrival(schedule=RateSchedule.model_validate("0:2,10:4,20:8"))
    t0 = 100.0
    records = [_record(i, t0 + t, 0.05 if t < 20 else 0.5) for i, t in enumerate(_times(arrival, 200))
               if t < 30]
    rows = [{"t": t0 + 1, "values": {"vllm:kv_cache_usage_perc": 0.2, "vllm:num_requests_waiting": 0}},
            {"t": t0 + 3, "values": {"vllm:kv_cache_usage_perc": 0.4, "vllm:num_requests_waiting": 2}}]
    slo = SLO(ttft_ms=200)
    windows = time_series(records, rows, t0, 10.0, slo, arrival.schedule.mass)
    assert [w.target_rate for w in windows[:3]] == [2, 4, 8]
    assert [w.sent for w in windows[:3]] == [20, 40, 80]
    assert [w.achieved_rate for w in windows[:3]] == [2, 4, 8]
    assert windows[0].kv_usage == pytest.approx(0.3) and windows[0].queue == 1 and windows[1].kv_usage is None
    assert windows[0].ttft_p99_ms == pytest.approx(50) and windows[2].ttft_p99_ms == pytest.approx(500)
    assert windows[0].goodput_rate == 2 and windows[2].goodput_rate == 0
    assert windows[0].in_flight == pytest.approx(2 * 0.09)  # 2/s, each 90 ms in flight
    knee = latency_knee(windows, slo)
    assert knee is not None and (knee.rate, knee.metric, knee.at_s) == (8, "ttft", 20)
    assert latency_knee(windows, SLO(ttft_ms=1000)) is None


# ---- against the calibration server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def test_each_step_sends_at_its_rate(calib_url: str, tmp_path: Path) -> None:
    """Exactly rate × length requests per step, sent on time, and the time series beside the records."""
    cfg = calibration_config(calib_url, arrival={"kind": "schedule", "schedule": "0:10,2:20,4:40"}, num_requests=None,
                             duration_s=5.999, scrape=True, scrape_interval_s=0.25, window_s=2.0,
                             slo={"ttft_ms": 1000})
    summary = run_load(cfg, tmp_path)
    assert summary.num_ok == 20 + 40 + 80 and summary.num_errors == 0
    t0 = json.loads((tmp_path / "load_config.json").read_text())["run"]["t0"]
    records = read_records(tmp_path / "requests.jsonl")
    for start, end, rate in ((0, 2, 10), (2, 4, 20), (4, 6, 40)):
        step = [r for r in records if start <= r.scheduled_t - t0 < end - 1e-9]
        assert len(step) == rate * (end - start)
        gaps = sorted(b.scheduled_t - a.scheduled_t for a, b in itertools.pairwise(sorted(step, key=lambda r: r.index)))
        assert gaps[0] == pytest.approx(1 / rate, abs=1e-9) and gaps[-1] == pytest.approx(1 / rate, abs=1e-9)
    lags_ms = sorted((r.sent_t - r.scheduled_t) * 1e3 for r in records)
    assert lags_ms[len(lags_ms) // 2] < 2.0 and (lags_ms[-1] < 20.0 or not moderate_load()), lags_ms[-5:]
    series = TimeSeries.model_validate_json((tmp_path / "timeseries.json").read_text())
    assert [w.target_rate for w in series.windows[:3]] == [10, 20, 40]
    # sent times: a request due on a window's edge may be sent a few µs either side of it (one request = 0.5/s)
    assert [w.achieved_rate for w in series.windows[:3]] == pytest.approx([10, 20, 40], abs=0.5)
    assert sum(w.sent for w in series.windows) == 140
    assert all(w.kv_usage is not None and w.queue == 0 for w in series.windows[:3])
    assert series.knee is None  # 20 ms TTFT never breaks a 1 s objective
    assert (tmp_path / "timeseries.png").exists()


def test_rate_schedule_flag_makes_a_schedule_arrival() -> None:
    from bench.load.cli import load_config

    config = load_config({"url": "http://127.0.0.1:1", "model": "m", "duration_s": 10.0,
                          "arrival": {"schedule": "ramp:0:1,10:5", "process": "poisson"}})
    assert isinstance(config.arrival, ScheduleArrival)
    assert config.arrival.schedule.ramp and config.arrival.process == "poisson"
    assert config.arrival.describe() == "schedule=ramp:0:1,10:5,poisson"


def test_summarize_rebuilds_the_time_series(calib_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import build_app

    cfg = calibration_config(calib_url, arrival={"kind": "schedule", "schedule": "0:10"}, num_requests=None,
                             duration_s=0.999, window_s=0.5)
    run_load(cfg, tmp_path)
    (tmp_path / "timeseries.json").unlink()
    result = CliRunner().invoke(build_app(), ["summarize", str(tmp_path), "--slo-ttft-ms", "1"])
    assert result.exit_code == 0, result.output
    series = TimeSeries.model_validate_json((tmp_path / "timeseries.json").read_text())
    assert sum(w.sent for w in series.windows) == 10
    assert series.knee is not None and series.knee.rate == 10  # 20 ms TTFT breaks a 1 ms objective at once
