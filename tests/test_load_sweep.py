"""``bench sweep``: the saturation rule on hand-built runs, a short sweep against the calibration server, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import build_app
from bench.load import sweep
from bench.load.calibration import calibration_server
from bench.load.config import SweepMode, SweepSpec
from bench.load.health import WorkerHealth
from bench.load.records import RequestRecord
from bench.load.sweep import SweepPoint, judge, load_sweep, median_run, point_verdict, run_sweep
from bench.metrics import SLO, LoadSummary, offered_rate, summarize, sustained_rate
from bench.metrics.health import client_health
from tests.helpers import calibration_config, scripted_server, starved_run_load


def request(index: int, scheduled: float, sent: float, end: float, tokens: int = 16) -> RequestRecord:
    """A successful request whose tokens arrive evenly between a 50 ms TTFT and ``end``."""
    first = sent + 0.05
    step = (end - first) / (tokens - 1)
    times = tuple(first + k * step for k in range(tokens))
    return RequestRecord(
        request_id=f"r{index}", index=index, scheduled_t=scheduled, sent_t=sent, end_t=times[-1],
        first_token_t=first, token_times=times, output_tokens=tokens, token_count_source="usage",
    )  # fmt: skip


def open_loop(
    n: int, rate: float, latency: Callable[[int], float], capacity: float | None = None
) -> list[RequestRecord]:
    """``n`` requests on a constant timetable; with ``capacity``, the server finishes at most that many per second."""
    out, free_at = [], 0.0
    for i in range(n):
        sched = i / rate
        if capacity is None:
            end = sched + latency(i)
        else:  # one FIFO queue served at ``capacity`` req/s
            end = max(sched, free_at) + 1.0 / capacity
            free_at = end
        out.append(request(i, sched, sched, end))
    return out


SPEC = SweepSpec(mode=SweepMode.rate, goodput_target=0.9)
LOOSE_SLO = SLO(e2e_ms=60_000)


def test_short_unsaturated_run_is_not_judged_saturated() -> None:
    # the audit's case: 100 requests at 8 req/s with a 4 s E2E. Over a duration that includes the
    # last request's latency the throughput is 100 / 16.4 s = 6.1 req/s < 0.8 x 8; the schedule was kept.
    records = open_loop(100, 8.0, lambda i: 4.0)
    s = summarize(records, LOOSE_SLO)
    assert s.request_throughput < 0.8 * 8.0
    assert s.offered_rate == pytest.approx(8.0)
    assert s.sustained_rate == pytest.approx(8.0)
    assert judge(s, SPEC, None) == (True, False)


def test_noisy_latency_does_not_fake_saturation() -> None:
    # latency alternating between 1 s and 7 s: stationary, so no queue grows
    records = open_loop(100, 8.0, lambda i: 1.0 if i % 2 else 7.0)
    s = summarize(records, LOOSE_SLO)
    assert s.sustained_rate is not None and s.sustained_rate > 0.95 * 8.0
    assert judge(s, SPEC, None) == (True, False)


def test_server_below_the_offered_rate_is_saturated_and_never_passes() -> None:
    records = open_loop(100, 8.0, lambda i: 0.0, capacity=5.0)
    s = summarize(records, LOOSE_SLO)
    assert s.goodput_fraction == 1.0  # the SLO alone would pass it
    assert s.sustained_rate == pytest.approx(5.0, rel=0.03)
    assert judge(s, SPEC, None) == (False, True)


def test_client_queue_growth_is_saturation() -> None:
    # max_concurrency held sends back: sent_t drifts away from the schedule, the server itself is fast
    records = []
    for i in range(60):
        sched, sent = i / 10.0, i / 4.0  # sends at 4/s while 10/s were scheduled
        records.append(request(i, sched, sent, sent + 0.2))
    s = summarize(records, LOOSE_SLO)
    assert s.sustained_rate == pytest.approx(4.0, rel=0.02)
    assert judge(s, SPEC, None) == (False, True)


def test_rate_helpers_on_tiny_inputs() -> None:
    assert offered_rate([]) is None and sustained_rate([]) is None
    one = [request(0, 0.0, 0.0, 1.0)]
    assert offered_rate(one) is None and sustained_rate(one) is None


def closed_loop(users: int, n: int, e2e_s: float) -> list[RequestRecord]:
    """``users`` closed-loop users with a constant latency: the first ``users`` requests share t = 0."""
    out = []
    for i in range(n):
        sched = (i // users) * e2e_s
        out.append(request(i, sched, sched, sched + e2e_s))
    return out


def point(summary: LoadSummary, value: float) -> SweepPoint:
    return SweepPoint(value=value, passed=True, saturated=False, summary=summary)


def test_concurrency_saturates_when_the_completion_rate_stops_growing() -> None:
    spec = SweepSpec(mode=SweepMode.concurrency)
    four = summarize(closed_loop(4, 100, 0.5), LOOSE_SLO)
    assert four.offered_rate == pytest.approx(8.0)  # 96 sends after t = 0 in 12 s
    eight = summarize(closed_loop(8, 100, 0.5), LOOSE_SLO)
    assert judge(eight, spec, point(four, 4)) == (True, False)
    flat = summarize(closed_loop(16, 100, 2.0), LOOSE_SLO)  # twice the users, four times the latency
    assert judge(flat, spec, point(eight, 8)) == (False, True)


# ---- against the calibration server -------------------------------------------------------------


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def test_sweep_stops_at_a_max_concurrency_cap(calib_url: str, tmp_path: Path) -> None:
    # Two slots and ~80 ms per request: the client can sustain ~25 req/s. 10 req/s passes;
    # 50 req/s meets the loose SLO but is saturated, so it fails and is never the answer.
    base = calibration_config(
        calib_url, arrival={"kind": "poisson", "rate": 1, "max_concurrency": 2}, num_requests=30,
        slo={"e2e_ms": 60_000},
    )  # fmt: skip
    spec = SweepSpec(mode=SweepMode.rate, start=10, factor=5, max_value=60, refine_steps=0)
    result = run_sweep(base, spec, tmp_path)
    assert [p.value for p in result.points] == [10, 50]
    low, high = result.points
    assert low.passed and not low.saturated
    assert high.saturated and not high.passed and high.slo_met
    assert high.summary.sustained_rate is not None and 12 < high.summary.sustained_rate < 35
    assert result.best == 10
    assert load_sweep(tmp_path / "sweep.json").best == 10
    cfg = json.loads((tmp_path / "rate-50" / "load_config.json").read_text())["config"]
    assert cfg["arrival"]["max_concurrency"] == 2


def test_sweep_mode_is_checked_by_the_cli(tmp_path: Path) -> None:
    args = ["sweep", "--url", "http://127.0.0.1:9", "--model", "m", "--slo-ttft-ms", "100", "--out", str(tmp_path)]
    result = CliRunner().invoke(build_app(), [*args, "--mode", "bogus"])
    assert result.exit_code == 2
    assert "Invalid value" in result.output and "bogus" in result.output
    assert not (tmp_path / "sweep.json").exists()


# --- repeats per step, and the client falling behind ------------------------------------------------------

def health_summary(tok_s: float, behind: bool) -> LoadSummary:
    lag = 30.0 if behind else 0.2
    health = client_health([WorkerHealth(0, [float(t) for t in range(20)], [lag / 1e3] * 20, 0.1, 1.0)], None, 20.0)
    return summarize([]).model_copy(update={"client": health, "output_throughput_tok_s": tok_s})


def test_a_repeated_step_is_judged_on_its_median_run_and_behind_in_any() -> None:
    runs = [health_summary(300.0, False), health_summary(100.0, True), health_summary(200.0, False)]
    assert median_run(runs).output_throughput_tok_s == 200.0
    assert median_run(runs[:2]).output_throughput_tok_s == 100.0  # the lower middle of an even count
    point = SweepPoint(value=4, passed=True, saturated=False, summary=median_run(runs), repeats=3, runs_behind=1)
    assert point.client_behind and point_verdict(point) == "behind (1/3 runs)"
    one = SweepPoint(value=4, passed=True, saturated=False, summary=runs[1])
    assert one.client_behind and point_verdict(one) == "behind"


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    with calibration_server(ttft_ms=20.0, itl_ms=40.0) as url:  # lag bound 20 ms: far above a healthy loop's
        yield url


SWEEP_ARGS = ["sweep", "--model", "calibration", "--tokenizer", "", "--num-requests", "8", "--input-tokens", "16",
              "--output-tokens", "8", "--mode", "concurrency", "--start", "2", "--max", "2", "--slo-e2e-ms", "60000"]


def test_sweep_repeats_every_step_and_keeps_its_spread(slow_url: str, tmp_path: Path) -> None:
    args = [*SWEEP_ARGS, "--url", slow_url, "--repeats", "2", "--warmup-runs", "0", "--out", str(tmp_path)]
    result = CliRunner().invoke(build_app(), args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    got = load_sweep(tmp_path / "sweep.json")
    (step,) = got.points
    assert step.repeats == 2 and step.spread is not None
    tput = step.spread["output_throughput_tok_s"]
    assert tput.n == 2 and tput.ci95_low is not None and got.behind_steps == []
    assert (tmp_path / "concurrency-2" / "repeat-1" / "summary.json").exists()
    assert "tok_s ±95%" in result.output


def test_a_step_whose_client_fell_behind_fails_the_sweep(slow_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "run_load", starved_run_load)
    result = CliRunner().invoke(build_app(), [*SWEEP_ARGS, "--url", slow_url, "--out", str(tmp_path)],
                                env={"COLUMNS": "250"})
    assert result.exit_code == sweep.CLIENT_BEHIND_EXIT == 3, result.output
    assert "the client fell behind at concurrency 2" in result.output and "--workers 2" in result.output
    assert "--workers auto" in result.output
    assert load_sweep(tmp_path / "sweep.json").behind_steps == [2.0]


def test_each_step_draws_its_own_prompts() -> None:
    """Steps are seeded apart (as ``bench run``'s fixed points): a server with a prefix cache could otherwise
    serve a later step's prompts from an earlier step's, and its TTFT would not be a cold prefill's."""
    from bench.load.runner import prepare

    base = calibration_config("http://127.0.0.1:9", tokenizer="smollm2-135m-instruct-hf", api="completions",
                              num_requests=4, workload={"kind": "random", "input_tokens": 64, "output_tokens": 8})
    spec = SweepSpec(mode=SweepMode.concurrency, start=1, max_value=8)
    one, two = (sweep._config_at(base, spec, v) for v in (1, 2))
    assert one.seed != two.seed and one.seed == sweep._config_at(base, spec, 1).seed  # apart, and repeatable
    first, second = prepare(one)[0], prepare(two)[0]
    assert {p.text for p in first}.isdisjoint(p.text for p in second)
