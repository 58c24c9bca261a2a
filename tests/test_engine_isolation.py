"""The Transformers engine in-process: a failing step ends only the requests that caused it, prompt logprobs are
computed in bounded chunks (and equal a whole-prompt forward), and options it cannot honour are refused.

The engine is the real one over the bundled model's HF checkpoint. To make a step fail as a model fault would,
the model's forward raises whenever its input holds a "poison" token id (a valid id no test prompt uses
otherwise); everything else is the real forward. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from backends.base import EngineOptions, GenChunk, GenRequest
from backends.checkpoints import Registry
from backends.errors import InvalidRequestError, UnsupportedOptionError
from backends.transformers.config import validate
from backends.transformers.engine import PROMPT_CHUNK, TransformersEngine
from tests.conftest import DEFAULT_MODEL

HF_MODEL = "smollm2-135m-instruct-hf"
POISON = 31337  # a valid token id; the patched forward raises when it sees it
TIMEOUT_S = 120


class PoisonedForward:
    """Wraps a model's forward: raises ``ValueError`` when the input ids hold :data:`POISON`."""

    def __init__(self, model: Any) -> None:
        self._forward = model.forward
        self.calls_with_poison = 0
        model.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        if ids is not None and bool((ids == POISON).any()):
            self.calls_with_poison += 1
            raise ValueError("poisoned input")
        return self._forward(*args, **kwargs)


@pytest.fixture(scope="module")
def hf_path(registry: Registry) -> Path:
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL, only={HF_MODEL})
    return registry.path_of(HF_MODEL)


@pytest.fixture(scope="module")
def engine(hf_path: Path) -> Iterator[TransformersEngine]:
    eng = TransformersEngine("m", hf_path, "hf", EngineOptions(max_batch=4, max_model_len=1024))
    asyncio.run(eng.start())
    PoisonedForward(eng.model)
    yield eng
    asyncio.run(eng.stop())


async def _run(engine: TransformersEngine, request: GenRequest) -> tuple[list[GenChunk], BaseException | None]:
    chunks: list[GenChunk] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            async for chunk in engine.generate(request):
                chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


def _good(engine: TransformersEngine, name: str, max_tokens: int = 32) -> GenRequest:
    ids = engine.apply_chat_template([{"role": "user", "content": f"Tell me about {name}."}])
    return GenRequest(name, ids, max_tokens=max_tokens, temperature=0, ignore_eos=True)


def _poison(engine: TransformersEngine, name: str) -> GenRequest:
    return GenRequest(name, [*engine.tokenize("Hello"), POISON], max_tokens=8, temperature=0)


def test_a_failing_prefill_ends_only_its_own_request(engine: TransformersEngine) -> None:
    async def main() -> list[tuple[list[GenChunk], BaseException | None]]:
        running = [asyncio.ensure_future(_run(engine, _good(engine, n, 48))) for n in ("cats", "dogs")]
        await asyncio.sleep(0.5)  # the good ones are decoding when the bad ones and a fresh good one arrive
        late = [_poison(engine, "p1"), _good(engine, "birds"), _poison(engine, "p2")]
        results = await asyncio.gather(*running, *(_run(engine, r) for r in late))
        return list(results)

    cats, dogs, p1, birds, p2 = asyncio.run(main())
    for chunks, error in (cats, dogs, birds):
        assert error is None
        assert sum(len(c.token_ids) for c in chunks) == (32 if chunks is birds[0] else 48)
        assert chunks[-1].finish_reason == "length"
    for chunks, error in (p1, p2):
        assert isinstance(error, ValueError) and "poisoned" in str(error) and not chunks


def test_a_near_zero_temperature_is_greedy_not_a_fault(engine: TransformersEngine) -> None:
    async def main() -> tuple[list[int], list[int]]:
        base = _good(engine, "rain", 12)
        greedy, _ = await _run(engine, base)
        tiny, error = await _run(engine, GenRequest("t", base.prompt_ids, max_tokens=12, temperature=1e-50,
                                                    ignore_eos=True))
        assert error is None
        return [t for c in greedy for t in c.token_ids], [t for c in tiny for t in c.token_ids]

    greedy, tiny = asyncio.run(main())
    assert tiny == greedy


@pytest.mark.parametrize("ids", [[], [-1], [49152], [10**9]])
def test_a_prompt_outside_the_vocabulary_is_refused_before_the_worker(engine: TransformersEngine,
                                                                      ids: list[int]) -> None:
    chunks, error = asyncio.run(_run(engine, GenRequest("bad", ids, max_tokens=4)))
    assert isinstance(error, InvalidRequestError) and not chunks
    assert engine.vocab_size == 49152


def test_prompt_logprobs_come_in_chunks_and_equal_a_whole_forward(engine: TransformersEngine) -> None:
    text = " ".join(f"Item {i} is on shelf {i % 7}." for i in range(90))
    ids = engine.tokenize(text)[: PROMPT_CHUNK * 2 + 37]  # three chunks, the last one partial
    assert len(ids) == PROMPT_CHUNK * 2 + 37
    chunks, error = asyncio.run(_run(engine, GenRequest("lp", ids, max_tokens=0, prompt_logprobs=2)))
    assert error is None and len(chunks) == 1
    scores = chunks[0].prompt_logprobs
    assert scores is not None and scores[0] is None and len(scores) == len(ids)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    got = torch.tensor([s.logprob for s in scores[1:] if s is not None])
    assert torch.allclose(got, want, atol=2e-3), float((got - want).abs().max())
    assert all(len(s.top) == 2 for s in scores[1:] if s is not None)


def test_prompt_logprobs_do_not_stall_the_running_batch(engine: TransformersEngine) -> None:
    long_ids = engine.tokenize(" ".join(f"Line {i} says hello." for i in range(400)))[:900]

    async def main() -> tuple[float, float]:
        scoring = asyncio.ensure_future(_run(engine, GenRequest("lp", long_ids, max_tokens=0, prompt_logprobs=1)))
        await asyncio.sleep(0.05)
        _, error = await _run(engine, _good(engine, "snow", 4))
        assert error is None
        chat_done = time.monotonic()
        _, error = await scoring
        assert error is None
        return chat_done, time.monotonic()

    chat_done, scoring_done = asyncio.run(main())
    assert chat_done < scoring_done  # the short request did not wait for the whole prompt to be scored


def test_threads_on_a_gpu_is_refused_before_anything_loads(hf_path: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"threads=2.*only on CPU"):  # bench serve's check
        validate(EngineOptions(device="cuda", threads=2), "hf")
    validate(EngineOptions(device="cpu", threads=2), "hf")
    eng = TransformersEngine("m", hf_path, "hf", EngineOptions(device="cuda", threads=2))
    with pytest.raises(UnsupportedOptionError, match=r"threads=2.*only on CPU"):
        asyncio.run(eng.start())
    assert eng.model is None and eng.tokenizer is None


def test_max_model_len_is_checked_against_the_config_before_the_weights(hf_path: Path) -> None:
    eng = TransformersEngine("m", hf_path, "hf", EngineOptions(max_model_len=100_000))
    with pytest.raises(UnsupportedOptionError, match=r"max_model_len=100000.*at most 8192"):
        asyncio.run(eng.start())
    assert eng.model is None and eng.tokenizer is None
