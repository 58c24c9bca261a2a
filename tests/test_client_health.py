"""Client health: the load client's own lag and CPU, and the "client fell behind" flag.

Pure functions with scripted samples first, then the load generator against the calibration server (whose
script is the ground truth): a healthy run is not flagged, a run whose event loop a CPU-burning callback
blocks is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bench.load.calibration import calibration_server
from bench.load.config import LoadConfig
from bench.load.display import summary_table
from bench.load.health import HEALTH_FILE, LagSampler, WorkerHealth, read_health
from bench.load.runner import run_load_async
from bench.load.sweep import client_verdict
from bench.metrics import summarize
from bench.metrics.health import CPU_BUSY_LIMIT, LAG_FLOOR_MS, behind_advice, client_health, lag_limit_ms
from tests.helpers import burn, burner, calibration_config

ITL_MS = 40.0  # the scripted token gap: the lag limit is then 20 ms, far above a healthy loop's jitter


def worker(lags_ms: list[float], cpu_s: float = 0.1, wall_s: float = 1.0, index: int = 0) -> WorkerHealth:
    """Samples at t = 0, 1, 2, ... s with the given lags."""
    return WorkerHealth(index, [float(t) for t in range(len(lags_ms))], [x / 1e3 for x in lags_ms], cpu_s, wall_s)


def test_limit_is_half_the_mean_itl_with_a_floor() -> None:
    assert lag_limit_ms(20.0) == 10.0
    assert lag_limit_ms(0.5) == LAG_FLOOR_MS
    assert lag_limit_ms(None) == LAG_FLOOR_MS


def test_healthy_samples_are_not_flagged() -> None:
    h = client_health([worker([0.2] * 99 + [3.0])], None, itl_mean_ms=20.0)
    assert h is not None and not h.behind and h.reasons == []
    assert h.lag_samples == 100 and h.lag_max_ms == pytest.approx(3.0)
    assert h.lag_p50_ms == pytest.approx(0.2)


def test_a_stalled_loop_is_flagged() -> None:
    h = client_health([worker([0.2] * 90 + [30.0] * 10)], None, itl_mean_ms=20.0)
    assert h is not None and h.behind
    assert h.lag_p99_ms == pytest.approx(30.0)
    assert h.lag_stalls == 10 and "event-loop lag p99 30.0 ms: 10 of 100 samples > 10.0 ms" in h.reasons[0]


def test_one_hiccup_in_a_short_run_is_not_a_verdict() -> None:
    h = client_health([worker([0.2] * 12 + [30.0, 30.0])], None, itl_mean_ms=20.0)
    assert h is not None and h.lag_p99_ms is not None and h.lag_p99_ms > 10.0
    assert h.lag_stalls == 2 and not h.behind


def test_a_cpu_bound_worker_is_flagged() -> None:
    h = client_health([worker([0.1] * 10), worker([0.1] * 10, cpu_s=0.95, index=1)], None, itl_mean_ms=20.0)
    assert h is not None and h.behind and h.cpu_busy == [0.1, 0.95]
    assert h.cpu_busy_max == 0.95 >= CPU_BUSY_LIMIT
    assert h.reasons == ["worker(s) [1] on the CPU >= 90% of the run"]


def test_only_samples_in_the_measured_window_count() -> None:
    h = client_health([worker([50.0, 50.0, 0.1, 0.1, 0.1])], (2.0, 4.0), itl_mean_ms=20.0)
    assert h is not None and h.lag_samples == 3 and not h.behind  # the warm-up's stall is outside


def test_no_samples_no_health() -> None:
    assert client_health([], None, 10.0) is None


def test_health_lines_round_trip(tmp_path: Path) -> None:
    w = worker([1.0, 2.0])
    path = tmp_path / HEALTH_FILE
    path.write_text(json.dumps(w.to_dict()) + "\n" + '{"worker": 1, "lag_t"')  # a torn last line is skipped
    assert read_health(path) == [w]


async def test_sampler_sees_a_blocked_loop() -> None:
    sampler, stop = LagSampler(time.perf_counter, interval_s=0.005), asyncio.Event()
    task = asyncio.create_task(sampler.run(stop))
    await asyncio.sleep(0.02)
    burn(0.05)
    await asyncio.sleep(0.02)
    stop.set()
    await task
    assert max(sampler.lags) >= 0.04


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    with calibration_server(ttft_ms=20.0, itl_ms=ITL_MS) as url:
        yield url


def config(url: str) -> LoadConfig:
    return calibration_config(url, arrival={"kind": "concurrency", "n": 2}, num_requests=12,
                              workload={"kind": "random", "input_tokens": 16, "output_tokens": 8},
                              request_timeout_s=30)  # fmt: skip


async def test_healthy_run_is_not_flagged(slow_url: str, tmp_path: Path) -> None:
    s = await run_load_async(config(slow_url), tmp_path)
    assert s.num_ok == 12 and s.client is not None
    assert s.client.workers == 1 and s.client.lag_samples > 10
    assert s.client.lag_limit_ms == pytest.approx(ITL_MS / 2, rel=0.2)
    assert not s.client.behind, s.client.reasons
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["client"]["behind"] is False and saved["client"]["lag_p99_ms"] is not None


async def test_blocked_loop_is_detected_and_flagged(slow_url: str, tmp_path: Path) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(burner(stop))
    try:
        s = await run_load_async(config(slow_url), tmp_path)
    finally:
        stop.set()
        await task
    assert s.num_ok == 12 and s.client is not None
    assert s.client.behind
    assert s.client.lag_p99_ms is not None and s.client.lag_p99_ms >= 60.0
    assert any("event-loop lag" in r for r in s.client.reasons)
    assert s.itl_ms.max is not None and s.itl_ms.max > 1.3 * ITL_MS  # the stalls really did skew the gaps
    console = Console(record=True, width=300)
    console.print(summary_table(s))
    text = console.export_text()
    assert "BEHIND" in text and "--workers 2" in behind_advice(s.client)  # the burner kept the worker busy


async def test_worker_processes_write_their_health(slow_url: str, tmp_path: Path) -> None:
    cfg = calibration_config(slow_url, arrival={"kind": "concurrency", "n": 2}, num_requests=4, workers=2,
                             workload={"kind": "random", "input_tokens": 16, "output_tokens": 4})  # fmt: skip
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 4 and s.client is not None and s.client.workers == 2
    assert sorted(w.worker for w in read_health(tmp_path / HEALTH_FILE)) == [0, 1]


def test_sweep_rows_say_whether_the_client_kept_up() -> None:
    behind = client_health([worker([30.0] * 10)], None, itl_mean_ms=20.0)
    ok = client_health([worker([0.1] * 10)], None, itl_mean_ms=20.0)
    base = summarize([])
    assert client_verdict(base.model_copy(update={"client": behind})) == "behind"
    assert client_verdict(base.model_copy(update={"client": ok})) == "ok"
    assert client_verdict(base) == "-"


def test_advice_tells_a_busy_client_from_a_starved_one() -> None:
    busy = client_health([worker([30.0] * 10, cpu_s=0.95)], None, itl_mean_ms=20.0)
    idle = client_health([worker([30.0] * 10, cpu_s=0.2)], None, itl_mean_ms=20.0)
    assert busy is not None and idle is not None
    assert behind_advice(busy).endswith("(--workers 2)") and "free cores" not in behind_advice(busy)
    assert "on the CPU 20% of the time" in behind_advice(idle) and "free cores for it" in behind_advice(idle)
