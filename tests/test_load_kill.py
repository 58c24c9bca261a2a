"""SIGKILL a running ``bench load``: the finished requests survive and the summary rebuilds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.load.calibration import calibration_server
from bench.load.records import read_records
from bench.load.runner import rebuild_summary


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "bench load ended before it could be killed"
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} never reached {n} lines")


def test_sigkill_keeps_finished_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with calibration_server(ttft_ms=5, itl_ms=5) as url:
        cmd = [
            sys.executable,
            "-c",
            "from bench.cli import main; main()",
            "load",
            "--url",
            url,
            "--model",
            "calibration",
            "--concurrency",
            "4",
            "--num-requests",
            "400",
            "--output-tokens",
            "40",
            "--slo-ttft-ms",
            "1000",
            "--no-scrape",
            "--out",
            str(out),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_lines(out / "requests.jsonl", 12, proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    raw = (out / "requests.jsonl").read_bytes()
    records = read_records(out / "requests.jsonl")
    assert len(records) == raw.count(b"\n") >= 12  # every complete line parses
    assert all(r.ok and len(r.token_times) == 40 for r in records)
    assert not (out / "summary.json").exists()
    summary = rebuild_summary(out)
    assert summary.num_ok == len(records) < 400
    assert summary.slo.ttft_ms == 1000  # the run's SLOs were saved before the first request
    assert json.loads((out / "summary.json").read_text())["num_ok"] == len(records)


def test_summarize_says_when_the_saved_config_no_longer_validates(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import build_app

    (tmp_path / "requests.jsonl").write_text("")
    (tmp_path / "load_config.json").write_text(json.dumps({"config": {"url": "u", "model": "m", "renamed": 1}}))
    result = CliRunner().invoke(build_app(), ["summarize", str(tmp_path)])
    assert result.exit_code == 2 and "renamed" in result.output and "--slo" in result.output
    result = CliRunner().invoke(build_app(), ["summarize", str(tmp_path), "--slo-ttft-ms", "100"])
    assert result.exit_code == 0, result.output  # the SLOs given: summarised without the saved config
