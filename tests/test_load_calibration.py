"""The generator against the calibration server (a separate process whose script is ground truth)."""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load.calibration import read_calibration_log
from bench.load.config import LoadConfig
from bench.load.records import read_records
from bench.load.runner import run_load_async
from bench.metrics import itl, tpot
from tests.helpers import ITL_MS, TTFT_MS, CpuPressure, calibration_config, moderate_load, scripted_server


@pytest.fixture(scope="module")
def calib_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calib-log")


@pytest.fixture(scope="module")
def calib_url(calib_log: Path) -> Iterator[str]:
    yield from scripted_server(calib_log)


@pytest.fixture(scope="module")
def chunky_url() -> Iterator[str]:
    yield from scripted_server(tokens_per_chunk=4)


def config(url: str, **kw: object) -> LoadConfig:
    return calibration_config(url, **kw)


async def test_timings_match_what_the_server_did(calib_url: str, calib_log: Path, tmp_path: Path) -> None:
    """Per request, the client's TTFT/TPOT against the server's own receipt and write times."""
    cfg = config(calib_url, arrival={"kind": "poisson", "rate": 20}, num_requests=60, warmup=3)
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 60 and s.num_errors == 0 and s.num_warmup == 3
    assert s.token_count_sources == {"usage": 60}
    assert s.total_output_tokens == 60 * 16
    await asyncio.sleep(0.2)  # the server logs a request after its last write
    log = read_calibration_log(calib_log)
    records = [r for r in read_records(tmp_path / "requests.jsonl") if not r.warmup]
    first_err, send_lag, tpot_err = [], [], []
    for r in records:
        recv, *writes = log[r.request_id]
        assert r.first_token_t is not None
        first_err.append(r.first_token_t - writes[0])  # the client's lag in seeing the first token
        send_lag.append(recv - r.sent_t)  # request write + server accept/parse (server CPU included)
        tpot_err.append((tpot(r) or 0) - (writes[-1] - writes[0]) / (len(writes) - 1))
    assert 0 <= statistics.median(first_err) * 1e3 < 2.0
    assert 0 <= statistics.median(send_lag) * 1e3 < 5.0
    assert abs(statistics.median(tpot_err)) * 1e3 < 1.0


# Above these the timing bound is not checked. The share of the run in which some task waited for a CPU (PSI's
# "some"), measured on a 2-core machine: 0.04-3% alone, 10% in the full suite (idle session servers waking; the
# server 0.1 ms late on its script), 37% beside two busy loops. The client's own lag probe does not tell a busy
# machine: the share of its samples above its stall limit (0.5 x ITL) was 6-18% alone, 22% in the CI run whose median
# came out 2.7 ms late.
MAX_CPU_STALL = 0.25
# How far over the script the client's median TTFT may come (see the assertion).
MAX_TTFT_OVERHEAD_MS = 5.0


def server_late_ms(calib_log: Path, records_file: Path) -> float:
    """How late the calibration server was on its own script: the median of (first write - receipt) - TTFT_MS
    over the run's measured requests, from the server's log."""
    log = read_calibration_log(calib_log)
    firsts = [log[r.request_id][1] - log[r.request_id][0] for r in read_records(records_file) if not r.warmup]
    return statistics.median(firsts) * 1e3 - TTFT_MS


async def test_median_ttft_and_tpot_match_the_script(calib_url: str, calib_log: Path, tmp_path: Path) -> None:
    """The client's median TTFT and TPOT are the script's, where the machine let the server keep its script.

    That precondition is measured, not assumed: the CPU pressure over the run itself (the load average read
    before it missed a busy neighbour on a shared CI host, where the median came out 2.7 ms late), the server's
    own log of how late it was on its script. test_timings_match_what_the_server_did bounds the client against
    the server's write times on any machine."""
    if not moderate_load():
        pytest.skip(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: "
            "the server cannot keep a millisecond script"
        )
    cfg = config(calib_url, arrival={"kind": "poisson", "rate": 20}, num_requests=60)
    with CpuPressure() as pressure:
        s = await run_load_async(cfg, tmp_path)
    await asyncio.sleep(0.2)  # the server logs a request after its last write
    late = server_late_ms(calib_log, tmp_path / "requests.jsonl")
    if late > 1.0 or (pressure.share or 0.0) > MAX_CPU_STALL:
        pytest.skip(f"the machine was busy: the server ran {late:.1f} ms late on its script (median), and some "
                    f"task waited for a CPU {pressure.share or 0.0:.0%} of the run")
    assert s.ttft_ms.p50 is not None and s.tpot_ms.p50 is not None
    # TTFT runs from the client's send: it holds the request's write and the server's parse before the script's 20 ms
    # start, and the client's read of the first chunk after them (test_timings_match_what_the_server_did bounds
    # these at 5 ms and 2 ms medians). Measured on a quiet 2-core machine: 1.5-3.0 ms over the script (the same hour,
    # run to run); 2.7 ms in the CI run that failed the old 2 ms bound. Never under it: no token is seen before the
    # server writes one. A TTFT taken from the wrong chunk or clock is off by the script's 20 ms or an ITL (4 ms).
    assert 0.0 <= s.ttft_ms.p50 - TTFT_MS < MAX_TTFT_OVERHEAD_MS
    assert abs(s.tpot_ms.p50 - ITL_MS) < 1.0


async def test_multi_token_chunks_give_per_token_itl(chunky_url: str, tmp_path: Path) -> None:
    cfg = config(chunky_url, arrival={"kind": "concurrency", "n": 2}, num_requests=10)
    s = await run_load_async(cfg, tmp_path)
    records = [r for r in read_records(tmp_path / "requests.jsonl") if r.ok]
    assert all(r.n_chunks == 1 + 4 for r in records)  # 1 + 15 tokens in chunks of 4,4,4,3
    assert all(len(r.token_times) == 16 for r in records)
    # chunk gaps are 16 ms; per token that is 4 ms, never the chunk gap
    assert s.itl_ms.p50 is not None and abs(s.itl_ms.p50 - ITL_MS) < 1.0
    assert max(x for r in records for x in itl(r)) < 4 * ITL_MS * 0.75
    assert s.tpot_ms.p50 is not None and abs(s.tpot_ms.p50 - ITL_MS) < 1.0


async def test_concurrency_bound_and_counts(calib_url: str, tmp_path: Path) -> None:
    cfg = config(calib_url, arrival={"kind": "concurrency", "n": 3}, num_requests=12, warmup=2)
    await run_load_async(cfg, tmp_path)
    records = read_records(tmp_path / "requests.jsonl")
    assert sorted(r.index for r in records) == list(range(14))
    assert sum(r.warmup for r in records) == 2
    for r in records:
        in_flight = sum(1 for o in records if o.sent_t <= r.sent_t < (o.closed_t or o.end_t))
        assert in_flight <= 3


async def test_capped_open_loop_shows_client_queue(calib_url: str, tmp_path: Path) -> None:
    cfg = config(calib_url, arrival={"kind": "constant", "rate": 200, "max_concurrency": 1}, num_requests=8)
    s = await run_load_async(cfg, tmp_path)
    # one slot, each request takes ~80 ms while one is due every 5 ms: the wait is client queue time
    assert s.queue_ms.p90 is not None and s.queue_ms.p90 > 100
    assert s.e2e_sched_ms.p50 is not None and s.e2e_ms.p50 is not None
    assert s.e2e_sched_ms.p50 > s.e2e_ms.p50 + 100


async def test_duration_bound(calib_url: str, tmp_path: Path) -> None:
    cfg = config(calib_url, arrival={"kind": "constant", "rate": 40}, num_requests=None, duration_s=0.5)
    await run_load_async(cfg, tmp_path)
    records = read_records(tmp_path / "requests.jsonl")
    span = max(r.scheduled_t for r in records) - min(r.scheduled_t for r in records)
    assert 19 <= len(records) <= 21 and span <= 0.5 + 1e-6


async def test_failed_requests_are_data(tmp_path: Path) -> None:
    from backends.net import free_port

    cfg = config(f"http://127.0.0.1:{free_port()}", arrival={"kind": "concurrency", "n": 2}, num_requests=4)
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 0 and s.num_errors == 4
    assert all(r.error for r in read_records(tmp_path / "requests.jsonl"))


def most_in_flight(path: Path) -> int:
    """The most requests of a run that were open at one instant (from sent to closed, or to end)."""
    events = []
    for r in read_records(path):
        events += [(r.sent_t, 1), (r.closed_t or r.end_t, -1)]
    depth, most = 0, 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # a close before a send at the same instant
        depth += step
        most = max(most, depth)
    return most


@pytest.mark.parametrize(("users", "workers", "processes"), [(1, 4, 1), (5, 2, 2)])
async def test_workers_split_the_users_exactly(
    calib_url: str, tmp_path: Path, users: int, workers: int, processes: int
) -> None:
    """``--workers`` never adds users: at concurrency 1 one process runs, and 5 users over 2 processes are 3 + 2."""
    cfg = config(calib_url, arrival={"kind": "concurrency", "n": users}, num_requests=4 * users, workers=workers)
    assert cfg.processes() == processes
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 4 * users
    assert {r.worker for r in read_records(tmp_path / "requests.jsonl")} == set(range(processes))
    assert most_in_flight(tmp_path / "requests.jsonl") == users


async def test_two_worker_processes(calib_url: str, tmp_path: Path) -> None:
    """``workers=2``: each index is sent once, by the process it belongs to, on the script's timing."""
    cfg = config(calib_url, arrival={"kind": "poisson", "rate": 30}, num_requests=40, warmup=2, workers=2)
    s = await run_load_async(cfg, tmp_path)
    records = read_records(tmp_path / "requests.jsonl")
    assert sorted(r.index for r in records) == list(range(42))
    assert all(r.worker == r.index % 2 for r in records)
    assert len({r.request_id for r in records}) == 42
    assert s.num_ok == 40 and s.num_warmup == 2 and s.token_count_sources == {"usage": 40}
    if not moderate_load():
        pytest.skip(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timing bounds not checked")
    assert s.ttft_ms.p50 is not None and s.tpot_ms.p50 is not None
    assert abs(s.ttft_ms.p50 - TTFT_MS) < 5.0
    assert abs(s.tpot_ms.p50 - ITL_MS) < 1.5
