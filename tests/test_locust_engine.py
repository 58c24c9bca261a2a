"""``bench load --engine locust`` and the locustfile, against the calibration server (ground truth)."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from backends.net import free_port
from bench.load.calibration import calibration_server, read_calibration_log
from bench.load.config import LoadConfig
from bench.load.locust.engine import LocustPlan, check_config, commands, locustfile, process_env, run_locust_async
from bench.load.locust.settings import fill_model, read_prompts, settings_from_options, write_prompts
from bench.load.records import RequestRecord, read_records
from bench.load.runner import run_load_async
from bench.load.tokenizer import load_tokenizer
from bench.load.workloads import Prompt
from bench.metrics import LoadSummary, tpot
from servers.launch import ServerHandle
from tests.helpers import ITL_MS, TTFT_MS, calibration_config, moderate_load, scripted_server

SECURED_KEY = "sk-test-123"  # the key tests/conftest.py's secured_server requires


@pytest.fixture(scope="module")
def calib_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calib-log")


@pytest.fixture(scope="module")
def calib_url(calib_log: Path) -> Iterator[str]:
    yield from scripted_server(calib_log)


def config(url: str, **kw: object) -> LoadConfig:
    return calibration_config(url, **{"arrival": {"kind": "concurrency", "n": 2}, **kw})


def locust_stats(out: Path) -> dict[tuple[str, str], tuple[int, float]]:
    """``(type, name) -> (count, median ms)`` from locust's final ``stats.json``."""
    entries = json.loads((out / "locust" / "stats.json").read_text())
    return {(e["method"], e["name"]): (e["num_requests"], locust_median(e)) for e in entries}


def locust_median(entry: dict[str, Any]) -> float:
    """Locust's own median over its rounded response-time histogram (as its UI computes it)."""
    times = {float(k): int(v) for k, v in entry["response_times"].items()}
    total, seen = entry["num_requests"], 0
    for t in sorted(times, reverse=True):
        seen += times[t]
        if total - seen <= int(total * 0.5):
            return t
    return 0.0


# ---- pure ----------------------------------------------------------------------------------------


def test_only_closed_loop_and_enough_users() -> None:
    with pytest.raises(ValueError, match="closed-loop"):
        check_config(config("http://x", arrival={"kind": "poisson", "rate": 5}))
    with pytest.raises(ValueError, match="at least as many users"):
        check_config(config("http://x", workers=3))
    assert check_config(config("http://x", workers=2)) == 2


def test_commands_single_and_distributed(tmp_path: Path) -> None:
    plan = LocustPlan(config("http://127.0.0.1:9/v1", num_requests=7, warmup=2), tmp_path, "r1", 2, 1, 30, 5599)
    (one,) = commands(plan)
    assert one[1:4] == ["-m", "locust", "-f"] and one[4].endswith("servers/locustfile.py")
    flags = dict(itertools.pairwise(one))
    assert flags["--host"] == "http://127.0.0.1:9" and flags["--max-requests"] == "7"
    assert flags["--warmup"] == "2" and flags["--users"] == "2" and flags["--run-time"] == "30s"
    assert "--master" not in one
    master, *workers = commands(LocustPlan(plan.config, tmp_path, "r1", 2, 2, 30, 5599))
    assert "--master" in master and master[master.index("--expect-workers") + 1] == "2"
    assert len(workers) == 2 and all("--worker" in w and "5599" in w for w in workers)


def test_settings_read_a_load_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "load.yaml"
    cfg.write_text("workload: {kind: shared-prefix, prefix_tokens: 32, suffix_tokens: 8}\nseed: 5\n")
    ns = argparse.Namespace(
        model="m", api="completions", workload_config=str(cfg), prompts_file="", tokenizer="", seed=0,
        max_requests=10, warmup=1, records="", run_id="x", no_ignore_eos=False, api_key="",
        request_timeout=60.0, bench_workers=2,
    )  # fmt: skip
    s = settings_from_options(ns)
    assert s.workload.kind == "shared-prefix" and s.seed == 5 and s.limit == 11 and s.workers == 2
    assert s.path == "/v1/completions"
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "nope"}')
    with pytest.raises(ValueError):
        settings_from_options(argparse.Namespace(**{**vars(ns), "workload_config": str(bad)}))


def test_prompt_file_round_trip(tmp_path: Path) -> None:
    prompts = [Prompt("a b", 4, 3, True), Prompt("ü\nx", 9)]
    write_prompts(tmp_path / "p.jsonl", prompts)
    assert read_prompts(tmp_path / "p.jsonl") == prompts


def test_the_api_key_goes_by_environment_not_command_line(tmp_path: Path) -> None:
    cfg = config("http://127.0.0.1:9", api_key="sk-secret-1")
    for workers in (1, 2):
        plan = LocustPlan(cfg, tmp_path, "r1", 2, workers, 30, 5599)
        assert not any("sk-secret-1" in arg for cmd in commands(plan) for arg in cmd)
    env = process_env(cfg, {"OPENAI_API_KEY": "sk-inherited", "PATH": "/bin"})
    assert env["OPENAI_API_KEY"] == "sk-secret-1" and env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    # no key in the config: an inherited one is not sent either (as with --engine native)
    assert "OPENAI_API_KEY" not in process_env(config("http://127.0.0.1:9"), {"OPENAI_API_KEY": "sk-inherited"})


def test_fill_model_reads_v1_models(calib_url: str) -> None:
    given = argparse.Namespace(model="m", api_key="")
    assert fill_model(given, None) is None and given.model == "m"
    options = argparse.Namespace(model="", api_key="")
    assert fill_model(options, calib_url + "/") == "calibration" and options.model == "calibration"
    with pytest.raises(RuntimeError, match="give --model"):
        fill_model(argparse.Namespace(model="", api_key=""), f"http://127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(RuntimeError, match="give --host"):
        fill_model(argparse.Namespace(model="", api_key=""), None)


# ---- against the calibration server --------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_locust_timings_match_the_server_and_bench_load(
    api: str, calib_url: str, calib_log: Path, tmp_path: Path
) -> None:
    cfg = config(calib_url, num_requests=40, warmup=2, api=api)
    loc = await run_locust_async(cfg, tmp_path / "locust")
    nat = await run_load_async(cfg, tmp_path / "native")
    for s in (loc, nat):
        assert s.num_ok == 40 and s.num_errors == 0 and s.num_warmup == 2
        assert s.total_output_tokens == 40 * 16 and s.token_count_sources == {"usage": 40}
    await asyncio.sleep(0.2)  # the server logs a request after its last write
    check_against_server_log(read_records(tmp_path / "locust" / "requests.jsonl"), calib_log)
    assert loc.ttft_ms.p50 is not None and nat.ttft_ms.p50 is not None
    assert loc.tpot_ms.p50 is not None and nat.tpot_ms.p50 is not None
    assert abs(loc.ttft_ms.p50 - nat.ttft_ms.p50) < 5.0
    assert abs(loc.tpot_ms.p50 - nat.tpot_ms.p50) < 5.0
    # locust's own statistics (what its UI and CSV show) say the same, rounded to whole ms
    stats = locust_stats(tmp_path / "locust")
    assert stats[("METRIC", "ttft")][0] == 40 and stats[("METRIC", "itl")][0] == 40 * 15
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    assert stats[("POST", path)][0] == 40 and stats[("POST", f"{path} (warm-up)")][0] == 2
    assert abs(stats[("METRIC", "ttft")][1] - loc.ttft_ms.p50) <= 1.5
    assert abs(stats[("METRIC", "tpot")][1] - loc.tpot_ms.p50) <= 1.5
    assert (tmp_path / "locust" / "locust" / "locust_stats.csv").exists()
    if moderate_load():
        assert abs(loc.ttft_ms.p50 - TTFT_MS) < 5.0
        assert abs(loc.tpot_ms.p50 - ITL_MS) < 5.0


def check_against_server_log(records: list[RequestRecord], log_dir: Path) -> None:
    """Per request: the client saw the first token within 5 ms of its write; TPOT as written."""
    log = read_calibration_log(log_dir)
    first_lag, tpot_err = [], []
    for r in records:
        recv, *writes = log[r.request_id]
        assert r.first_token_t is not None and recv >= r.sent_t
        first_lag.append(r.first_token_t - writes[0])
        tpot_err.append((tpot(r) or 0) - (writes[-1] - writes[0]) / (len(writes) - 1))
    # the server stamps a write just after making it, so the client may see it a little "before"
    assert -1.0 < statistics.median(first_lag) * 1e3 < 5.0
    assert abs(statistics.median(tpot_err)) * 1e3 < 5.0


async def test_distributed_two_workers_complete_and_aggregate(calib_url: str, tmp_path: Path) -> None:
    cfg = config(calib_url, num_requests=24, warmup=2, workers=2, arrival={"kind": "concurrency", "n": 4})
    s: LoadSummary = await run_locust_async(cfg, tmp_path)
    records = read_records(tmp_path / "requests.jsonl")
    assert sorted(r.index for r in records) == list(range(26))
    assert {r.worker for r in records} == {0, 1}
    assert s.num_ok == 24 and s.num_warmup == 2 and s.num_errors == 0
    stats = locust_stats(tmp_path)  # the master's aggregate over both workers
    assert stats[("POST", "/v1/chat/completions")][0] == 24 and stats[("METRIC", "ttft")][0] == 24
    assert (tmp_path / "locust" / "master.log").exists() and (tmp_path / "locust" / "worker-1.log").exists()


async def test_duration_bound_and_failed_requests_are_data(tmp_path: Path) -> None:
    cfg = config(f"http://127.0.0.1:{free_port()}", num_requests=None, duration_s=2)
    s = await run_locust_async(cfg, tmp_path)
    assert s.num_ok == 0 and s.num_errors > 0
    assert all(r.error for r in read_records(tmp_path / "requests.jsonl"))


# ---- against servebench's own server behind --api-key (tests/conftest.py) -----------------------


def secured_config(server: ServerHandle, **kw: object) -> LoadConfig:
    """Four short requests, two users: a bounded run on the CPU model."""
    base: dict[str, object] = {
        "url": server.url, "model": server.model, "tokenizer": None, "scrape": False, "seed": 1,
        "num_requests": 4, "arrival": {"kind": "concurrency", "n": 2}, "request_timeout_s": 120,
        "workload": {"kind": "random", "input_tokens": 8, "output_tokens": 4},
    }  # fmt: skip
    return LoadConfig.model_validate({**base, **kw})


async def test_bench_load_locust_sends_the_api_key(
    secured_server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ok = await run_locust_async(secured_config(secured_server, api_key=SECURED_KEY), tmp_path / "key")
    assert ok.num_ok == 4 and ok.num_errors == 0
    assert all(r.http_status == 200 for r in read_records(tmp_path / "key" / "requests.jsonl"))
    refused = await run_locust_async(secured_config(secured_server), tmp_path / "no-key")
    assert refused.num_ok == 0 and refused.num_errors == 4
    records = read_records(tmp_path / "no-key" / "requests.jsonl")
    assert len(records) == 4 and all(r.http_status == 401 and "HTTP 401" in (r.error or "") for r in records)


def test_locustfile_without_model_uses_the_first_of_v1_models(secured_server: ServerHandle, tmp_path: Path) -> None:
    workload = tmp_path / "workload.yaml"
    workload.write_text("kind: random\ninput_tokens: 8\noutput_tokens: 4\n")
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "-u", "1", "-r", "1", "-t", "120s",
        "--host", secured_server.url, "--max-requests", "2", "--workload-config", str(workload),
        "--records", str(tmp_path / "requests.jsonl"), "--only-summary", "--exit-code-on-error", "1",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": SECURED_KEY}  # the key by locust's env var, as the engine passes it
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"no --model given: using '{secured_server.model}'" in done.stderr
    records = read_records(tmp_path / "requests.jsonl")
    assert len(records) == 2 and all(r.ok for r in records), [r.error for r in records]


def test_locustfile_without_model_or_server_ends_with_an_error(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "-u", "1", "-t", "60s",
        "--host", f"http://127.0.0.1:{free_port()}", "--max-requests", "2",
        "--records", str(tmp_path / "requests.jsonl"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "give --model" in done.stderr
    assert not (tmp_path / "requests.jsonl").exists() or not read_records(tmp_path / "requests.jsonl")


# ---- output tokens without usage: the same counting as the native engine ---------------------------

BUNDLED = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def no_usage_url() -> Iterator[str]:
    """16 tokens per response in chunks of 1, 4, 4, 4, 3, and never a usage chunk."""
    with calibration_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens_per_chunk=4, usage=False) as url:
        yield url


async def test_locust_retokenizes_without_usage_like_bench_load(no_usage_url: str, tmp_path: Path) -> None:
    if load_tokenizer(None, BUNDLED)[0] is None:
        pytest.skip("no tokenizer for the bundled model (run bench models prepare)")
    cfg = config(no_usage_url, num_requests=6, warmup=1, tokenizer=BUNDLED)
    out = io.StringIO()
    loc = await run_locust_async(cfg, tmp_path / "locust", Console(file=out, width=300))
    nat = await run_load_async(cfg, tmp_path / "native")
    for s in (loc, nat):
        assert s.num_ok == 6 and s.token_count_sources == {"retokenized": 6}
        assert s.total_output_tokens == 6 * 16  # " tok" x 16 is 16 tokens of the bundled tokenizer
    records = read_records(tmp_path / "locust" / "requests.jsonl")
    assert all(r.output_tokens == 16 and r.n_chunks == 5 and len(r.token_times) == 16 for r in records)
    text = out.getvalue()
    assert text.count("no usage") == 1 and "6 by retokenizing" in text  # one warning per run
    log = (tmp_path / "locust" / "locust" / "locust.log").read_text()
    assert log.count("sent no usage for 6 of 6 requests") == 1  # and one from the locust process itself


async def test_locust_without_tokenizer_counts_chunks_and_says_so(no_usage_url: str, tmp_path: Path) -> None:
    out = io.StringIO()
    s = await run_locust_async(config(no_usage_url, num_requests=4), tmp_path, Console(file=out, width=300))
    assert s.token_count_sources == {"chunks": 4} and s.total_output_tokens == 4 * 5  # the undercount, flagged
    assert out.getvalue().count("no usage") == 1 and "4 as one token per chunk" in out.getvalue()
