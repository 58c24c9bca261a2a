"""The Transformers engine in-process: batched decoding gives the same greedy text as one at a time."""

from __future__ import annotations

import asyncio
import time

import pytest

from backends.base import EngineOptions, GenRequest
from backends.checkpoints import Registry
from backends.transformers.engine import TransformersEngine
from tests.conftest import DEFAULT_MODEL

QUESTIONS = ("What is 2+3?", "Name a primary color.", "What is the capital of France?", "Say hello.")


async def _generate(engine: TransformersEngine, question: str, **kw: object) -> tuple[str, str | None, list[int]]:
    ids = engine.apply_chat_template([{"role": "user", "content": question}])
    chunks = [c async for c in engine.generate(GenRequest(question, ids, max_tokens=24, temperature=0, **kw))]  # type: ignore[arg-type]
    tokens = [t for c in chunks for t in c.token_ids]
    return "".join(c.text for c in chunks), chunks[-1].finish_reason, tokens


@pytest.fixture(scope="module")
def engine(registry: Registry) -> TransformersEngine:
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL, only={"smollm2-135m-instruct-hf"})
    path = registry.path_of("smollm2-135m-instruct-hf")
    eng = TransformersEngine("m", path, "hf", EngineOptions(max_batch=4, max_model_len=1024))
    asyncio.run(eng.start())
    return eng


def test_batched_equals_sequential(engine: TransformersEngine) -> None:
    async def both() -> tuple[list[tuple[str, str | None, list[int]]], list[tuple[str, str | None, list[int]]]]:
        alone = [await _generate(engine, q) for q in QUESTIONS]
        together = list(await asyncio.gather(*(_generate(engine, q) for q in QUESTIONS)))
        return alone, together

    alone, together = asyncio.run(both())
    for (text_a, reason_a, toks_a), (text_b, reason_b, toks_b) in zip(alone, together, strict=True):
        assert reason_a == reason_b
        # Padding changes float summation order, so allow a late divergence but not an early one.
        common = next((i for i, (a, b) in enumerate(zip(toks_a, toks_b, strict=False)) if a != b), len(toks_a))
        assert common >= min(len(toks_a), 8), (text_a, text_b)
    assert "5" in alone[0][0] and "Paris" in alone[2][0]


def test_ignore_eos_and_min_tokens_force_the_length(engine: TransformersEngine) -> None:
    async def go() -> tuple[str, str | None, list[int]]:
        return await _generate(engine, "Say hello.", ignore_eos=True)

    _text, reason, tokens = asyncio.run(go())
    assert reason == "length" and len(tokens) == 24


def test_stats_report_no_made_up_capacity(engine: TransformersEngine) -> None:
    # The last chunk reaches the client just before the worker drops the row: poll, bounded.
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = engine.stats()
    # The dense cache grows until memory runs out: no fixed capacity, so none is reported (not max_batch x len).
    assert stats.running == 0 and stats.kv_cache_usage is None and stats.kv_capacity_tokens is None
