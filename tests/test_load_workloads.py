"""Arrival processes and workloads: statistics, determinism, the cut-off ShareGPT file, exact lengths."""

from __future__ import annotations

import itertools
import json
import random
import statistics
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from bench.load.arrivals import Arrival, ConcurrencyArrival, GammaArrival, PoissonArrival
from bench.load.workloads import (
    JsonlWorkload,
    RandomWorkload,
    ShareGPTWorkload,
    TextBuilder,
    iter_json_array,
    marker,
    materialize,
    sharegpt_file,
)


def gaps(arrival: Arrival, n: int = 20000, seed: int = 3) -> list[float]:
    offs = list(itertools.islice(arrival.offsets(seed), n))
    return [b - a for a, b in itertools.pairwise(offs)]


def test_arrivals_validate_from_plain_data() -> None:
    adapter = TypeAdapter(Arrival)
    assert isinstance(adapter.validate_python({"kind": "gamma", "rate": 5, "burstiness": 0.5}), GammaArrival)
    with pytest.raises(ValueError):
        adapter.validate_python({"kind": "poisson", "rate": 5, "bogus": 1})


def test_constant_poisson_gamma_statistics() -> None:
    constant = TypeAdapter(Arrival).validate_python({"kind": "constant", "rate": 4})
    assert {round(g, 12) for g in gaps(constant, 100)} == {0.25}
    assert constant.describe() == "constant=4/s"
    p = gaps(PoissonArrival(rate=10))
    assert statistics.mean(p) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(p) / statistics.mean(p) == pytest.approx(1.0, rel=0.05)
    g = gaps(GammaArrival(rate=10, burstiness=0.25))
    assert statistics.mean(g) == pytest.approx(0.1, rel=0.08)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(2.0, rel=0.1)  # CV = 1/sqrt(k)


def test_timetable_is_deterministic_per_seed() -> None:
    a = PoissonArrival(rate=3)
    assert list(itertools.islice(a.offsets(7), 50)) == list(itertools.islice(a.offsets(7), 50))
    assert list(itertools.islice(a.offsets(7), 50)) != list(itertools.islice(a.offsets(8), 50))
    with pytest.raises(TypeError):
        ConcurrencyArrival(n=2).next_request_time(0.0, random.Random(0))


def test_cut_off_json_array_yields_complete_records(tmp_path: Path) -> None:
    records = [{"id": i, "text": "x, ] } {" * i} for i in range(5)]
    text = json.dumps(records, indent=2)
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index('"id": 4') + 3])
    assert [r["id"] for r in iter_json_array(cut, chunk_chars=7)] == [0, 1, 2, 3]
    whole = tmp_path / "whole.json"
    whole.write_text(text)
    assert len(list(iter_json_array(whole, chunk_chars=5))) == 5


def test_sharegpt_package_file_without_tokenizer() -> None:
    assert sharegpt_file().name == "ShareGPT_V3_unfiltered_cleaned_split.json"
    prompts = materialize(ShareGPTWorkload(output_tokens=32), 20, TextBuilder(None, "chat"), seed=0)
    assert len(prompts) == 20 and all(p.text and p.output_tokens == 32 and not p.exact for p in prompts)


def test_jsonl_workload(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello there", "output_tokens": 7}\n\n{"prompt": "bye"}\n')
    prompts = materialize(JsonlWorkload(path=path, output_tokens=3), 5, TextBuilder(None, "completions"), 0)
    assert [(p.text, p.output_tokens) for p in prompts[:3]] == [
        ("hello there", 7),
        ("bye", 3),
        ("hello there", 7),
    ]


def test_random_prompts_are_unique_without_tokenizer() -> None:
    prompts = materialize(RandomWorkload(input_tokens=20, output_tokens=5), 50, TextBuilder(None, "chat"), 0)
    assert len({p.text.split()[0] for p in prompts}) == 50  # unique "<reversed index> Request <seed>:" start


def test_random_prompts_have_exact_token_counts() -> None:
    from bench.load.tokenizer import load_tokenizer

    tok, where = load_tokenizer(None, "smollm2-135m-instruct")
    if tok is None:
        pytest.skip(f"no tokenizer for the bundled model: {where}")
    builder = TextBuilder(tok, "completions")
    prompts = materialize(RandomWorkload(input_tokens=77, output_tokens=5), 30, builder, seed=1)
    assert all(p.exact for p in prompts)
    assert {len(tok.encode(p.text, add_special_tokens=False)) for p in prompts} == {77}
    chat = TextBuilder(tok, "chat")
    p = materialize(RandomWorkload(input_tokens=77, output_tokens=5), 1, chat, seed=1)[0]
    ids = tok.apply_chat_template([{"role": "user", "content": p.text}], add_generation_prompt=True, tokenize=True)  # type: ignore[attr-defined]
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert len(ids) == 77


def pooled_texts(workload: dict[str, object], pool: int, count: int) -> list[str]:
    """What a duration-bounded run with a ``pool``-prompt pool sends for its first ``count`` requests."""
    from bench.load.client import body_for_index
    from bench.load.executor import Job
    from tests.helpers import calibration_config

    cfg = calibration_config("http://127.0.0.1:9", num_requests=None, duration_s=1.0, prompt_pool=pool,
                             workload=workload)  # fmt: skip
    prompts = materialize(cfg.workload, cfg.total_requests(), TextBuilder(None, cfg.api), cfg.seed)
    assert len(prompts) == pool
    job = Job(cfg, prompts, "run")
    return [json.loads(body_for_index(job.bodies, job.prompts, i))["messages"][0]["content"] for i in range(count)]


def test_requests_a_pool_apart_send_different_prompts() -> None:
    texts = pooled_texts({"kind": "random", "input_tokens": 24, "output_tokens": 4}, pool=8, count=24)
    assert texts[3] != texts[3 + 8] != texts[3 + 16]
    assert len(set(texts)) == 24
    # only the marker changes: the rest of the text is the pooled prompt's
    assert texts[3 + 8] == texts[3].replace(marker("Request 1", 3), marker("Request 1", 3 + 8))
    shared = pooled_texts({"kind": "shared-prefix", "prefix_tokens": 16, "suffix_tokens": 8}, pool=4, count=12)
    assert len(set(shared)) == 12


def test_prompts_without_a_marker_cycle_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello there"}\n{"prompt": "bye"}\n')
    texts = pooled_texts({"kind": "jsonl", "path": str(path)}, pool=2, count=4)
    assert texts == ["hello there", "bye", "hello there", "bye"]


def test_swapped_marker_keeps_the_exact_token_count() -> None:
    from bench.load.tokenizer import load_tokenizer

    tok, where = load_tokenizer(None, "smollm2-135m-instruct")
    if tok is None:
        pytest.skip(f"no tokenizer for the bundled model: {where}")
    p = materialize(RandomWorkload(input_tokens=40, output_tokens=5), 3, TextBuilder(tok, "completions"), 1)[2]
    assert p.exact and p.tag == "Request 1"
    for index in (2 + 2048, 9_999_999):
        text = p.text.replace(marker(p.tag, 2), marker(p.tag, index))
        assert text != p.text
        assert len(tok.encode(text, add_special_tokens=False)) == 40


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_random_prompts_part_at_their_first_content_token() -> None:
    """No 16-token prefix-cache block is shared by accident: completions share under one block; chat prompts
    share the chat template's own header and nothing of their content (issue #20: the old marker put 10 equal
    tokens after the header, and vLLM found 17-22% prefix hits in a random run)."""
    from bench.load.tokenizer import load_tokenizer

    tok, where = load_tokenizer(None, "smollm2-135m-instruct")
    if tok is None:
        pytest.skip(f"no tokenizer for the bundled model: {where}")
    w = RandomWorkload(input_tokens=128, output_tokens=5)
    texts = [p.text for p in materialize(w, 40, TextBuilder(tok, "completions"), 0)]
    done = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert max(common_prefix(a, b) for a, b in itertools.combinations(done, 2)) < 16
    assert max(common_prefix(a, b) for a, b in itertools.combinations(done[:10], 2)) == 0
    chat = [p.text for p in materialize(w, 40, TextBuilder(tok, "chat"), 0)]
    ids = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)  # type: ignore[attr-defined]
           for t in chat]  # fmt: skip
    ids = [i if isinstance(i, list) else i["input_ids"] for i in ids]
    header = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False,  # type: ignore[attr-defined]
                                     tokenize=False).split("x")[0]  # fmt: skip
    header_len = len(tok.encode(header, add_special_tokens=False))
    shared = max(common_prefix(a, b) for a, b in itertools.combinations(ids, 2))
    assert shared <= header_len + 1, tok.decode(ids[0][:shared])
