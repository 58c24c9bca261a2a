"""`bench serve` as a user runs it: prints the URL, serves, and on Ctrl-C drains running requests and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx

from backends.checkpoints import Registry
from backends.net import free_port

MODEL = "smollm2-135m-instruct-hf"


def _wait_url(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line and "http://" in line:
            return line.split(" at ", 1)[1].strip()
        if proc.poll() is not None:
            raise AssertionError(f"bench serve exited early with {proc.returncode}")
    raise AssertionError("bench serve printed no URL")


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("server never became healthy")


def _wait_running(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
        if any(line.startswith("vllm:num_requests_running{") and line.endswith(" 1.0") for line in text.splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError("the request never started running")


def test_ctrl_c_drains_the_running_request_then_exits(prepared: Registry) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "bench", "serve", "--backend", "transformers", "--model", MODEL,
           "--port", str(port), "--max-model-len", "512", "--max-batch", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _wait_url(proc, 240)
        assert url == f"http://127.0.0.1:{port}/v1"
        _wait_healthy(url, 240)
        result: dict[str, object] = {}

        def long_request() -> None:
            body = {"model": MODEL, "prompt": "Count: 1, 2,", "max_tokens": 40, "ignore_eos": True}
            reply = httpx.post(f"{url}/completions", json=body, timeout=120)
            result["status"] = reply.status_code
            result["tokens"] = reply.json()["usage"]["completion_tokens"]

        worker = threading.Thread(target=long_request)
        worker.start()
        _wait_running(url, 60)
        proc.send_signal(signal.SIGINT)
        worker.join(120)
        assert result == {"status": 200, "tokens": 40}  # drained, not cut off
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
