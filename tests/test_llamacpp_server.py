"""llama-server over the bundled Q4_1 model, driven with the official openai client.

One server per distinct option set, session-scoped; tiny ``max_tokens``. The first run builds llama-server
(minutes); later runs reuse the cached binary.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from backends.base import EngineOptions
from backends.checkpoints import Registry, load_registry
from backends.llamacpp.build import ensure_server
from backends.net import free_port
from servers.launch import LaunchError, ServerHandle, build_spec, running_server, start_server
from tests.helpers import serve

pytestmark = pytest.mark.llamacpp

MODEL = "smollm2-135m-instruct"
ADD: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2+3? Answer with just the number."}]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_server("cpu")  # builds once, outside any server's start-up timeout
    return tmp_path_factory.mktemp("llamacpp")


def _serve(registry: Registry, log_dir: Path, options: EngineOptions) -> Iterator[ServerHandle]:
    return serve(registry, "llamacpp", MODEL, options, log_dir, timeout_s=120)


@pytest.fixture(scope="module")
def server(registry: Registry, log_dir: Path) -> Iterator[ServerHandle]:
    yield from _serve(registry, log_dir, EngineOptions(max_batch=4, max_model_len=512, device="cpu"))


@pytest.fixture(scope="module")
def q8_server(registry: Registry, log_dir: Path) -> Iterator[ServerHandle]:
    yield from _serve(registry, log_dir, EngineOptions(max_batch=2, max_model_len=512, kv_cache_dtype="q8",
                                                       device="cpu"))


@pytest.fixture(scope="module")
def ngram_server(registry: Registry, log_dir: Path) -> Iterator[ServerHandle]:
    yield from _serve(registry, log_dir, EngineOptions(max_batch=2, max_model_len=512, speculative="ngram",
                                                       device="cpu"))


@pytest.fixture(scope="module")
def prefix_server(registry: Registry, log_dir: Path) -> Iterator[ServerHandle]:
    """Prefix caching on (the other servers of this module have it off, the default)."""
    yield from _serve(registry, log_dir, EngineOptions(max_batch=2, max_model_len=512, prefix_caching=True,
                                                       device="cpu"))


def _client(handle: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.base_url, api_key="unused", max_retries=0, timeout=60)


def _answer(handle: ServerHandle) -> str:
    resp = _client(handle).chat.completions.create(model=handle.model, messages=ADD, max_tokens=8, temperature=0)
    return resp.choices[0].message.content or ""


def test_started_and_logged(server: ServerHandle) -> None:
    assert server.startup_s > 0 and server.healthy()
    log = server.log_path.read_text(errors="replace")
    assert "n_slots = 4" in log and "n_ctx_slot = 512" in log and "K (f16)" in log
    models = _client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_and_completion(server: ServerHandle) -> None:
    assert "5" in _answer(server)
    comp = _client(server).completions.create(model=server.model, prompt="The capital of France is",
                                              max_tokens=6, temperature=0)
    assert comp.choices[0].text.strip() and comp.usage is not None and comp.usage.completion_tokens <= 6


def test_streaming(server: ServerHandle) -> None:
    client = _client(server)
    stream = client.chat.completions.create(model=server.model, messages=ADD, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "5" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    pieces = [c.choices[0].text for c in client.completions.create(
        model=server.model, prompt="One, two, three,", max_tokens=6, temperature=0, stream=True) if c.choices]
    assert len(pieces) >= 2 and "".join(pieces).strip()


async def test_four_concurrent_requests_overlap(server: ServerHandle) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)

    async def one(i: int) -> tuple[float, float]:
        stream = await client.completions.create(model=server.model, prompt=f"Story {i}: once upon a time",
                                                 max_tokens=32, temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True})
        first = 0.0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and not first:
                first = time.monotonic()
        return first, time.monotonic()

    spans = await asyncio.gather(*(one(i) for i in range(4)))
    await client.close()
    # Each request was generating while every other one was: the server decoded them together.
    assert all(first > 0 for first, _ in spans)
    assert max(first for first, _ in spans) < min(end for _, end in spans)


def test_metrics_are_exposed(server: ServerHandle) -> None:
    _answer(server)
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert "llamacpp:prompt_tokens_total" in body and "llamacpp:tokens_predicted_total" in body


def test_q8_kv_cache_keeps_greedy_output_sensible(q8_server: ServerHandle) -> None:
    log = q8_server.log_path.read_text(errors="replace")
    assert "K (q8_0)" in log and "V (q8_0)" in log and "flash_attn            = enabled" in log
    assert "5" in _answer(q8_server)


def test_ngram_speculation_keeps_greedy_output_sensible(ngram_server: ServerHandle) -> None:
    assert "ngram-simple" in " ".join(ngram_server.process.args)  # type: ignore[arg-type]
    assert "5" in _answer(ngram_server)
    # A prompt that repeats itself gives prompt lookup something to draft from.
    text = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat"
    resp = _client(ngram_server).completions.create(model=ngram_server.model, prompt=text, max_tokens=24,
                                                    temperature=0)
    assert resp.choices[0].text.strip()
    with urllib.request.urlopen(f"{ngram_server.url}/metrics", timeout=10) as metrics:
        counters = dict(line.rsplit(" ", 1) for line in metrics.read().decode().splitlines()
                        if line.startswith("llamacpp:spec_decode"))
    assert float(counters["llamacpp:spec_decode_num_draft_tokens_total"]) > 0, counters  # it did draft
    assert float(counters["llamacpp:spec_decode_num_accepted_tokens_total"]) > 0, counters


def test_a_dead_server_fails_health_and_requests_fast(registry: Registry, log_dir: Path) -> None:
    spec = build_spec(registry, "llamacpp", MODEL, EngineOptions(max_batch=1, max_model_len=256, device="cpu"),
                      port=free_port())
    handle = start_server(spec, registry, log_dir / "killed.log", timeout_s=120)
    try:
        client = _client(handle)
        stream = client.completions.create(model=handle.model, prompt="Count: 1, 2, 3,", max_tokens=200,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True})
        started = time.monotonic()
        with pytest.raises((openai.APIError, httpx.HTTPError)):  # the kill happens mid-stream
            for n, _ in enumerate(stream):
                if n == 1:
                    os.kill(handle.process.pid, signal.SIGKILL)
        assert time.monotonic() - started < 30
        handle.process.wait(10)
        assert not handle.alive() and not handle.healthy(timeout=2)
        with pytest.raises(openai.APIConnectionError):
            client.completions.create(model=handle.model, prompt="hi", max_tokens=2)
        with pytest.raises(LaunchError, match="exited with code -9"):
            handle.wait_ready(5)
    finally:
        handle.stop()


def test_bad_flag_combination_fails_start_with_the_servers_log(registry: Registry, log_dir: Path) -> None:
    spec = build_spec(registry, "llamacpp", MODEL, EngineOptions(max_batch=1, max_model_len=256, device="cpu"),
                      port=free_port())
    missing = spec.model_path.with_name("no-such-model.gguf")
    bad = spec.__class__(**{**spec.__dict__, "model_path": missing})
    with pytest.raises(LaunchError, match="exited with code"):
        start_server(bad, registry, log_dir / "bad.log", timeout_s=60)


def test_help_knows_every_flag_we_pass(server: ServerHandle) -> None:
    cmd = [str(a) for a in server.process.args]  # type: ignore[union-attr]
    help_text = subprocess.run([cmd[0], "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in (a for a in cmd[1:] if a.startswith("-")):
        assert f"{flag}," in help_text or f"{flag} " in help_text or f"{flag}\n" in help_text, flag


def test_draft_model_past_512_prompt_tokens(registry: Registry, log_dir: Path) -> None:
    """The bug class the in-process server had: a draft model crashed past 512 tokens without logits_all."""
    options = EngineOptions(max_batch=1, max_model_len=1024, device="cpu", speculative=f"draft:{MODEL}",
                            num_speculative_tokens=4)
    spec = build_spec(registry, "llamacpp", MODEL, options, port=free_port())
    with running_server(spec, registry, log_dir / "draft.log", timeout_s=120) as handle:
        prompt = "The quick brown fox jumps over the lazy dog. " * 52 + "Repeat the sentence once:"
        resp = _client(handle).completions.create(model=handle.model, prompt=prompt, max_tokens=12, temperature=0)
        with urllib.request.urlopen(f"{handle.url}/metrics", timeout=10) as metrics:
            lines = metrics.read().decode().splitlines()
    assert resp.usage is not None and resp.usage.prompt_tokens > 512 and resp.choices[0].text.strip()
    drafts = next(float(line.split()[-1]) for line in lines if line.startswith("llamacpp:spec_decode_num_drafts_total"))
    assert drafts > 0


def test_bench_load_survives_connections_llama_server_closes(server: ServerHandle, tmp_path: Path) -> None:
    # llama-server drops a keep-alive connection after a stream without saying so; the load client must
    # retry such a request on a fresh connection instead of recording a spurious error.
    from bench.load.arrivals import ConcurrencyArrival
    from bench.load.config import LoadConfig
    from bench.load.runner import run_load
    from bench.load.workloads import RandomWorkload

    config = LoadConfig(url=server.url, model=server.model, api="completions",
                        workload=RandomWorkload(input_tokens=16, output_tokens=8),
                        arrival=ConcurrencyArrival(n=4), num_requests=24, scrape=False)
    summary = run_load(config, tmp_path)
    assert summary.num_errors == 0, summary.errors
    assert summary.num_ok == 24 and summary.total_output_tokens == 24 * 8


def test_loglikelihood_eval_stops_at_the_echo_refusal(server: ServerHandle, tmp_path: Path) -> None:
    """llama-server refuses echo=true; bench eval in loglikelihood mode stops at once, with the reason."""
    from bench.evals.config import EvalConfig
    from bench.evals.runner import EndpointUnsupportedError, run_eval

    config = EvalConfig(url=server.url, model=server.model, task="arc-easy", mode="loglikelihood", limit=6,
                        concurrency=1)
    with pytest.raises(EndpointUnsupportedError) as err:
        run_eval(config, tmp_path / "out")
    message = str(err.value)
    assert "ignores echo=true" in message and "--mode generate" in message
    assert (tmp_path / "out" / "samples.jsonl").read_text() == ""  # it did not go on to fail every sample
    assert not (tmp_path / "out" / "eval_summary.json").exists()  # no summary that looks like a result


def test_bench_eval_cli_says_why_and_exits_2(server: ServerHandle, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import build_app

    args = ["eval", "--url", server.url, "--model", server.model, "--task", "arc-easy", "--mode", "loglikelihood",
            "--limit", "2", "--concurrency", "1", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert "echo" in result.output and "--mode generate" in result.output


@pytest.mark.parametrize("caching", [True, False], ids=["prefix-caching-on", "prefix-caching-off"])
def test_multi_turn_prefix_hits_rise_with_turn_index(request: pytest.FixtureRequest, caching: bool,
                                                     tmp_path: Path) -> None:
    """Each turn resends the history: with prompt caching llama-server takes it from the slot's cache (its usage
    says how many tokens, ``prompt_tokens_details.cached_tokens``, and so does ``llamacpp:prompt_tokens_cached_total``);
    without it, nothing."""
    from bench.load.runner import run_load
    from tests.helpers import multi_turn_config

    handle: ServerHandle = request.getfixturevalue("prefix_server" if caching else "server")
    summary = run_load(multi_turn_config(handle.url, handle.model), tmp_path)
    assert summary.num_ok == 8, summary.errors
    cached = [t.cached_tokens_mean for t in summary.turns]
    assert len(cached) == 4 and all(c is not None for c in cached), cached
    hit_rate = summary.server.get("prefix_cache_hit_rate")
    print(f"llama-server, prefix caching {caching}: cached tokens by turn {cached}, hit rate {hit_rate}")
    if caching:
        assert all(b > a for a, b in itertools.pairwise(cached)), cached  # type: ignore[operator]
        assert hit_rate is not None and hit_rate > 0
    else:
        assert cached == [0, 0, 0, 0] and hit_rate == 0
