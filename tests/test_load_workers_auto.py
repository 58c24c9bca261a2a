"""``--workers auto``: the probe plan (pure, with scripted summaries), then real probes against the calibration
server: a client that keeps up stays at one worker; one whose single worker is starved (a CPU-burning callback
in its event loop) gets a second process, whose probe then keeps up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bench.cli import build_app
from bench.load.autoworkers import (
    AUTO_FILE,
    PROBE_MIN_REQUESTS,
    choose_workers,
    next_count,
    probe_config,
    probe_requests,
    read_auto_workers,
    worker_cap,
)
from bench.load.calibration import calibration_server
from bench.load.config import LoadConfig
from bench.load.repeats import RunOne
from bench.load.runner import run_load
from bench.metrics import LoadSummary, summarize
from bench.metrics.health import client_health
from tests.helpers import calibration_config, starved_run_load
from tests.test_client_health import worker

ITL_MS = 40.0  # lag bound 20 ms: a healthy loop's jitter is far below it, the burner's 80 ms stalls far above


def cfg(url: str = "http://127.0.0.1:9", **over: object) -> LoadConfig:
    return calibration_config(url, **{"arrival": {"kind": "concurrency", "n": 4}, "num_requests": 200,
                                      "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 8},
                                      "request_timeout_s": 30, **over})  # fmt: skip


def test_probe_is_short_and_at_the_target_load() -> None:
    assert probe_requests(cfg()) == PROBE_MIN_REQUESTS  # 4 users x 4 < the minimum
    assert probe_requests(cfg(arrival={"kind": "concurrency", "n": 64}, num_requests=1000)) == 256
    assert probe_requests(cfg(arrival={"kind": "poisson", "rate": 100}, num_requests=None, duration_s=60)) == 500
    assert probe_requests(cfg(num_requests=10)) == 10  # never more than the run itself
    probe = probe_config(cfg(duration_s=60, warmup=20, scrape=True), 4)
    assert (probe.workers, probe.duration_s, probe.warmup, probe.scrape) == (4, None, 0, False)
    assert probe.arrival == cfg().arrival


def test_workers_double_up_to_the_cores_and_the_users() -> None:
    assert worker_cap(cfg(), cores=16) == 4  # 4 users: a fifth worker would have none
    assert worker_cap(cfg(arrival={"kind": "poisson", "rate": 10}), cores=6) == 6
    assert [next_count(n, 6) for n in (1, 2, 4, 6)] == [2, 4, 6, None]


def scripted(behind_below: int) -> tuple[list[int], RunOne]:
    """A run_one whose client is behind with fewer than ``behind_below`` workers (scripted health)."""
    seen: list[int] = []

    def run_one(c: LoadConfig, out: Path, console: Console | None) -> LoadSummary:
        seen.append(c.workers)
        lag = 30.0 if c.workers < behind_below else 0.2
        health = client_health([worker([lag] * 20, index=i) for i in range(c.workers)], None, itl_mean_ms=20.0)
        return summarize([]).model_copy(update={"client": health})

    return seen, run_one


def test_choice_is_the_first_count_that_keeps_up(tmp_path: Path) -> None:
    seen, run_one = scripted(behind_below=3)
    got = choose_workers(cfg(arrival={"kind": "concurrency", "n": 64}), tmp_path, run_one, cores=8)
    assert seen == [1, 2, 4] and got.chosen == 4
    assert got.why.startswith("4: the first count whose client kept up") and "bound 10.00 ms" in got.why
    assert [p.behind for p in got.probes] == [True, True, False]
    assert read_auto_workers(tmp_path) == got


def test_every_probe_behind_takes_the_cap_and_says_so(tmp_path: Path) -> None:
    seen, run_one = scripted(behind_below=99)
    got = choose_workers(cfg(arrival={"kind": "concurrency", "n": 64}), tmp_path, run_one, cores=6)
    assert seen == [1, 2, 4, 6] and got.chosen == 6
    assert "still fell behind at the most workers tried (6" in got.why
    assert "on the CPU 10% of the time, so it waited for a core other processes held" in got.why  # cpu_s 0.1 of 1 s


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    with calibration_server(ttft_ms=20.0, itl_ms=ITL_MS) as url:
        yield url


def test_cli_keeps_one_worker_when_the_client_keeps_up(slow_url: str, tmp_path: Path) -> None:
    args = ["load", "--url", slow_url, "--model", "calibration", "--tokenizer", "", "--no-scrape",
            "--concurrency", "4", "--num-requests", "12", "--input-tokens", "16", "--output-tokens", "8",
            "--workers", "auto", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(build_app(), args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "--workers auto chose 1: the first count whose client kept up" in result.output
    choice = json.loads((tmp_path / AUTO_FILE).read_text())
    assert choice["chosen"] == 1 and [p["workers"] for p in choice["probes"]] == [1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_ok"] == 12 and summary["client"]["workers"] == 1
    assert (tmp_path / "workers-probe-1" / "summary.json").exists()


def test_cli_refuses_a_bad_worker_count(tmp_path: Path) -> None:
    args = ["load", "--url", "http://127.0.0.1:9", "--model", "m", "--workers", "many", "--out", str(tmp_path)]
    result = CliRunner().invoke(build_app(), args, env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "takes a number or auto" in result.output


def starved_one_worker(c: LoadConfig, out: Path, console: Console | None) -> LoadSummary:
    """One worker shares its event loop with a CPU burner; worker processes run on their own."""
    if c.workers > 1:
        return run_load(c, out, console)
    return starved_run_load(c, out, console)


def test_a_starved_single_worker_gets_a_second(slow_url: str, tmp_path: Path) -> None:
    got = choose_workers(cfg(slow_url, num_requests=16), tmp_path, starved_one_worker, cores=4)
    assert [p.workers for p in got.probes] == [1, 2], got
    first, second = got.probes
    assert first.behind and first.lag_p99_ms is not None and first.lag_p99_ms >= 60.0
    assert second.behind is False and got.chosen == 2, second.reasons
