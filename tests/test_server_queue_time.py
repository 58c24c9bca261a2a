"""The queue time our server exports as ``vllm:request_queue_time_seconds`` (arrival to the engine's scheduler
starting the request), measured on the session's real server (``transformers_server``: max_batch 4) with the
bundled model, and the server figures a ``bench load`` run reports from it over its measured window."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.load.config import LoadConfig
from bench.load.runner import run_load_async
from servers.launch import ServerHandle
from tests.helpers import server_metric, wait_server_idle

QUEUE = "vllm:request_queue_time_seconds"
SLOTS = 4  # the fixture's max_batch


def queue_sum_count(url: str) -> tuple[float, float]:
    return server_metric(url, QUEUE + "_sum"), server_metric(url, QUEUE + "_count")


def load(server: ServerHandle, users: int, requests: int) -> LoadConfig:
    return LoadConfig.model_validate({
        "url": server.url, "model": server.spec.model_name, "api": "completions", "seed": 20,
        "workload": {"kind": "random", "input_tokens": 32, "output_tokens": 24},
        "arrival": {"kind": "concurrency", "n": users}, "num_requests": requests, "scrape_interval_s": 0.2,
        "request_timeout_s": 120,
    })  # fmt: skip


def test_an_idle_server_starts_a_request_at_once(transformers_server: ServerHandle) -> None:
    url = transformers_server.url
    wait_server_idle(url, 60)
    before = queue_sum_count(url)
    body = {"model": transformers_server.spec.model_name, "prompt": "Hello there", "max_tokens": 4}
    httpx.post(f"{url}/v1/completions", json=body, timeout=60).raise_for_status()
    total, count = (a - b for a, b in zip(queue_sum_count(url), before, strict=True))
    assert count == 1
    assert 0 <= total < 0.1  # nothing ahead of it: the scheduler takes it within one loop turn


async def test_requests_beyond_the_batch_wait_and_the_summary_shows_it(transformers_server: ServerHandle,
                                                                       tmp_path: Path) -> None:
    url = transformers_server.url
    wait_server_idle(url, 60)
    users = 2 * SLOTS  # half of each wave waits in the engine for a slot
    before = queue_sum_count(url)
    s = await run_load_async(load(transformers_server, users, users), tmp_path)
    assert s.num_ok == users, s.errors
    total, count = (a - b for a, b in zip(queue_sum_count(url), before, strict=True))
    assert count == users
    # SLOTS requests waited at least until a running one ended: about one whole request each.
    assert s.e2e_ms.min is not None and total > SLOTS * 0.5 * s.e2e_ms.min / 1e3
    server = s.server
    queue_ms, ttft_ms = server.get("server_queue_mean_ms"), server.get("server_ttft_mean_ms")
    assert queue_ms is not None and ttft_ms is not None and server.get("server_e2e_mean_ms") is not None
    assert queue_ms == pytest.approx(total / count * 1e3, rel=0.05)
    assert 0 < queue_ms < ttft_ms  # waiting is part of the server's TTFT, which starts at the same arrival
