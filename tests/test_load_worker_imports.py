"""Client worker processes count tokens without transformers or torch, and count them as one process does.

A worker gets its :class:`bench.load.executor.Job` pickled; the Job's token counter crosses as the ``tokenizers``
backend of the fast tokenizer (importing torch cost every worker seconds at every point of a sweep).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import runner
from bench.load.arrivals import ConcurrencyArrival
from bench.load.records import read_records
from bench.load.runner import Prepared, prepare, run_load_async
from bench.load.tokenizer import BackendCounter, TokenCounter, Tokenizer, load_tokenizer
from tests.helpers import HEAVY_MODULES, calibration_config, recording_worker_main, scripted_server

BUNDLED = "smollm2-135m-instruct"
NO_USAGE = {"stream_options": {"include_usage": False}}
TEXTS = [
    "",
    " tok tok tok",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\nand\r\nnewlines   ",
    "unicode: héllo wörld — 東京 🚀 naïve café",
    "<|im_start|>user\nspecial-token text<|im_end|><|endoftext|>",
    "0000001 Request 1: numbers 1234567890 3.14159 and code `x = f(y) ** 2`",
]


@pytest.fixture(scope="module")
def no_usage_url() -> Iterator[str]:
    yield from scripted_server(tokens_per_chunk=4)


def test_counter_crosses_as_its_backend_with_the_same_counts(bundled_tokenizer: Tokenizer) -> None:
    counter = TokenCounter(bundled_tokenizer)
    crossed = pickle.loads(pickle.dumps(counter))
    assert isinstance(crossed, BackendCounter)
    assert isinstance(pickle.loads(pickle.dumps(crossed)), BackendCounter)
    for text in TEXTS:
        expected = len(bundled_tokenizer.encode(text, add_special_tokens=False))
        assert counter(text) == expected
        assert crossed(text) == expected, text


def test_counter_counts_the_prompts_as_the_tokenizer_does(bundled_tokenizer: Tokenizer) -> None:
    cfg = calibration_config("http://127.0.0.1:9", tokenizer=BUNDLED + "-hf", api="completions", num_requests=8,
                             workload={"kind": "random", "input_tokens": 200, "output_tokens": 8})  # fmt: skip
    prompts, tok = prepare(cfg)
    if tok is None:
        pytest.skip("the bundled model's HF tokenizer is not prepared")
    crossed = pickle.loads(pickle.dumps(TokenCounter(tok)))
    assert [crossed(p.text) for p in prompts] == [len(tok.encode(p.text, add_special_tokens=False)) for p in prompts]


def _run(url: str, out: Path, workers: int) -> list[tuple[int, int | None, str]]:
    import asyncio

    cfg = calibration_config(url, tokenizer=BUNDLED + "-hf", workers=workers, num_requests=12, extra_body=NO_USAGE,
                             arrival={"kind": "concurrency", "n": 2})  # fmt: skip
    asyncio.run(run_load_async(cfg, out))
    return sorted((r.index, r.output_tokens, r.token_count_source) for r in read_records(out / "requests.jsonl"))


def test_two_workers_import_no_torch_and_count_as_one(
    no_usage_url: str, bundled_tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = _run(no_usage_url, tmp_path / "one", 1)
    monkeypatch.setattr(runner, "_worker_main", recording_worker_main)
    two = _run(no_usage_url, tmp_path / "two", 2)
    assert len(one) == 12
    assert {source for _, _, source in one} == {"retokenized"}
    assert two == one
    for worker in (0, 1):
        loaded = json.loads((tmp_path / "two" / f"imports-{worker}.json").read_text())
        assert loaded["tokenizers"], "the worker got no tokenizers backend to count with"
        assert not any(loaded[name] for name in HEAVY_MODULES), loaded


def test_a_sweep_prepares_its_prompts_once(bundled_tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = load_tokenizer

    def counting(spec: str | None, model: str) -> tuple[Tokenizer | None, str]:
        calls.append(spec)
        return real(spec, model)

    monkeypatch.setattr(runner, "load_tokenizer", counting)
    cfg = calibration_config("http://127.0.0.1:9", tokenizer=BUNDLED + "-hf", api="completions", num_requests=4,
                             workload={"kind": "random", "input_tokens": 64, "output_tokens": 8})  # fmt: skip
    prepared = Prepared()
    first, _ = prepare(cfg, prepared=prepared)
    again, _ = prepare(cfg.model_copy(update={"arrival": ConcurrencyArrival(n=4)}), prepared=prepared)
    other_seed, _ = prepare(cfg.model_copy(update={"seed": 2}), prepared=prepared)
    assert again == first and again is not first
    assert other_seed != first
    assert calls == [BUNDLED + "-hf"]
    assert prepare(cfg)[0] == first  # without ``prepared``, the same prompts made afresh
