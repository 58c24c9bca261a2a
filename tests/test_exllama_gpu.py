"""ExLlama engines on a GPU, served by our real app on 127.0.0.1 and driven with the official openai client.

Run on the GPU machine (benchmarks/gpu/exllama_run.sh does it) with the checkpoints named by environment:
``EXL2_DIR`` (an EXL2 conversion of SmolLM2-135M-Instruct) and ``EXL3_DIR`` (an EXL3 one). A test whose
checkpoint or library is missing is skipped with the reason.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.base import EngineOptions

pytestmark = pytest.mark.gpu

openai = pytest.importorskip("openai")

ENGINES = {"exllamav2": ("EXL2_DIR", "exl2"), "exllamav3": ("EXL3_DIR", "exl3")}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass
class Served:
    """An engine served in-process by uvicorn on a free loopback port."""

    client: Any
    model: str
    engine: Any


def _checkpoint(backend: str) -> tuple[Path, str]:
    var, fmt = ENGINES[backend]
    value = os.environ.get(var)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{var} is not set to a {fmt} checkpoint directory")
    from backends import registry

    reason = registry.availability(backend)
    if reason:
        pytest.skip(f"{backend}: {reason}")
    return Path(value), fmt


def _serve(backend: str, options: EngineOptions, draft: Path | None = None) -> Iterator[Served]:
    import uvicorn

    from backends import registry
    from backends.net import free_port
    from servers.app import create_app
    from servers.settings import ServerSettings

    path, fmt = _checkpoint(backend)
    registry.validate(backend, options, fmt)
    engine = registry.load_class(backend)("smollm2", path, fmt, options, None, draft_path=draft)
    port = free_port()
    settings = ServerSettings(port=port, served_model_name="smollm2", max_concurrency=options.max_batch)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"{backend} server did not start")
        time.sleep(0.1)
    try:
        yield Served(openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=120), "smollm2",
                     engine)
    finally:
        server.should_exit = True
        thread.join(60)


def _greedy(s: Served, max_tokens: int = 24, **extra: Any) -> str:
    out = s.client.chat.completions.create(model=s.model, messages=QUESTION, max_tokens=max_tokens,
                                           temperature=0, **extra)
    return str(out.choices[0].message.content)


@pytest.fixture(scope="module", params=sorted(ENGINES))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """Each engine with its default cache, batch 1 (what runs without flash-attn)."""
    yield from _serve(request.param, EngineOptions(max_batch=1, max_model_len=2048))


def test_chat_answers_and_streams(served: Served) -> None:
    text = _greedy(served)
    assert "paris" in text.lower(), text
    stream = served.client.chat.completions.create(
        model=served.model, messages=QUESTION, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens > 0


def test_completion_logprobs_echo_and_stop(served: Served) -> None:
    prompt = "The capital of France is"
    out = served.client.completions.create(model=served.model, prompt=prompt, max_tokens=8, temperature=0,
                                           logprobs=2)
    lp = out.choices[0].logprobs
    assert lp is not None and len(lp.token_logprobs) == out.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs)
    echo = served.client.completions.create(model=served.model, prompt=prompt, max_tokens=0, echo=True,
                                            logprobs=1)
    values = echo.choices[0].logprobs.token_logprobs
    assert values[0] is None and all(v is not None and v <= 0 for v in values[1:])
    stopped = served.client.completions.create(model=served.model, prompt="1, 2, 3, 4,", max_tokens=20,
                                               temperature=0, stop=[" 7"])
    assert stopped.choices[0].finish_reason == "stop" and " 7" not in stopped.choices[0].text


def test_ignore_eos_runs_to_length(served: Served) -> None:
    out = served.client.completions.create(model=served.model, prompt="Hi", max_tokens=64, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 64 and out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("backend", sorted(ENGINES))
@pytest.mark.parametrize("kv", ["q8", "q6", "q4"])
def test_quantized_cache_keeps_answer(backend: str, kv: str) -> None:
    for s in _serve(backend, EngineOptions(max_batch=1, max_model_len=1024, kv_cache_dtype=kv)):
        assert "paris" in _greedy(s).lower()


@pytest.mark.parametrize("kv", ["k8v4", "k4v8"])
def test_v3_key_value_bits_keep_answer(kv: str) -> None:
    """exllamav3's CacheLayer_quant with k_bits != v_bits, built from the k<bits>v<bits> option."""
    for s in _serve("exllamav3", EngineOptions(max_batch=1, max_model_len=1024, kv_cache_dtype=kv)):
        layers = s.engine._gen.cache.layers  # a list in some exllamav3 versions, a dict in others
        bits = {(layer.k_bits, layer.v_bits) for layer in (layers.values() if isinstance(layers, dict) else layers)}
        assert bits == {(int(kv[1]), int(kv[3]))}
        assert "paris" in _greedy(s).lower()


@pytest.mark.parametrize("backend", sorted(ENGINES))
@pytest.mark.parametrize("speculative", ["ngram", "draft"])
def test_speculative_matches_greedy(backend: str, speculative: str) -> None:
    """Greedy output with speculation equals plain greedy output (the model drafts for itself)."""
    path, _ = _checkpoint(backend)
    base = EngineOptions(max_batch=1, max_model_len=1024)
    for s in _serve(backend, base):
        plain = _greedy(s, 64)
    options = base.model_copy(update={"speculative": "ngram" if speculative == "ngram" else "draft:self"})
    for s in _serve(backend, options, draft=path if speculative == "draft" else None):
        assert _greedy(s, 64) == plain
        stats = s.engine.stats().extra
        assert stats["spec_accepted_tokens"] + stats["spec_rejected_tokens"] > 0


def test_exllamav2_batching_matches_flash_attn() -> None:
    """max_batch > 1 starts only where flash-attn gives paged attention, and is refused otherwise."""
    from backends.errors import UnsupportedOptionError

    _, fmt = _checkpoint("exllamav2")
    from backends.exllamav2.config import HAS_FLASH_ATTN

    if HAS_FLASH_ATTN:
        for s in _serve("exllamav2", EngineOptions(max_batch=4, max_model_len=1024)):
            assert s.engine.capabilities.batching == "continuous"
        return
    with pytest.raises(UnsupportedOptionError, match="flash-attn"):
        from backends.exllamav2.config import validate

        validate(EngineOptions(max_batch=4), fmt)
