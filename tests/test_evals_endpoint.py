"""Evals through a real server: the bundled model behind our OpenAI endpoint, and lm-eval against it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backends.checkpoints import Registry
from bench.cli import build_app
from bench.evals.config import EvalConfig
from bench.evals.runner import SAMPLES_FILE, SUMMARY_FILE, EvalSetupError, run_eval

SAMPLE_KEYS = {"index", "doc_id", "prompt", "output", "extracted", "gold", "score", "e2e_s", "error"}
HF_MODEL = "smollm2-135m-instruct-hf"


def _samples(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / SAMPLES_FILE).read_text().splitlines()]


def _check_complete(out: Path, n: int) -> list[dict[str, Any]]:
    samples = _samples(out)
    assert len(samples) == n
    assert sorted(s["index"] for s in samples) == list(range(n))
    for sample in samples:
        assert sample.keys() >= SAMPLE_KEYS
        assert sample["error"] is None, sample["error"]
        assert sample["prompt"] and sample["output"] is not None and sample["e2e_s"] > 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["n_samples"] == n and summary["n_errors"] == 0
    assert summary["latency"]["requests"] == n and summary["latency"]["e2e_s"]["p50"] > 0
    return samples


def _config(server: Any, **kwargs: Any) -> EvalConfig:
    return EvalConfig(url=server.url, model=server.model, concurrency=4, seed=3, **kwargs)


def test_arc_loglikelihood_through_server(transformers_server: Any, tmp_path: Path) -> None:
    summary = run_eval(_config(transformers_server, task="arc-easy", mode="loglikelihood", limit=6), tmp_path)
    samples = _check_complete(tmp_path, 6)
    assert summary.metric == "acc" and summary.value is not None and 0.0 <= summary.value <= 1.0
    assert summary.ci95 is not None and summary.ci95[0] <= summary.value <= summary.ci95[1]
    for sample in samples:
        assert all(lp < 0 for lp in sample["output"])  # one summed logprob per choice
        assert len(sample["output"]) == len(sample["prompt"]["continuations"])


def test_arc_generate_and_squad_through_server(transformers_server: Any, tmp_path: Path) -> None:
    config = _config(transformers_server, task="arc-challenge", mode="generate", limit=4, shots=1)
    arc = run_eval(config, tmp_path / "arc")
    _check_complete(tmp_path / "arc", 4)
    assert arc.metrics["macro_f1"] is not None and 0.0 <= arc.metrics["macro_f1"] <= 1.0
    squad = run_eval(_config(transformers_server, task="squad", limit=4, max_tokens=12), tmp_path / "squad")
    samples = _check_complete(tmp_path / "squad", 4)
    assert squad.value is not None and 0.0 <= squad.value <= 1.0
    assert 0.0 <= (squad.metrics["exact_match"] or 0.0) <= squad.value
    assert squad.mode == "generate" and squad.mode_note is None  # auto means generate outside ARC
    assert all(isinstance(s["gold"], list) and s["gold"] for s in samples)


def test_math_cli_chat_streaming(transformers_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "math"
    args = ["eval", "--url", transformers_server.url, "--model", transformers_server.model]
    args += ["--task", "math-absdiff", "--limit", "3", "--shots", "1", "--chat", "--stream"]
    args += ["--max-tokens", "48", "--out", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "absdiff_mean" in result.output
    samples = _check_complete(out, 3)
    assert all(s["ttft_s"] is not None and 0 < s["ttft_s"] <= s["e2e_s"] for s in samples)
    assert all(isinstance(s["prompt"], list) and s["prompt"][-1]["role"] == "user" for s in samples)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["higher_is_better"] is False and summary["latency"]["ttft_s"]["p50"] > 0
    assert summary["metrics"]["exact_match"] is not None and 0.0 <= summary["metrics"]["exact_match"] <= 1.0
    diffs = [s["score"] for s in samples if s["score"] is not None]
    assert all(d >= 0 for d in diffs)


def test_humaneval_is_opt_in_and_runs_sandboxed(transformers_server: Any, tmp_path: Path) -> None:
    with pytest.raises(EvalSetupError, match="allow-code-execution"):
        run_eval(_config(transformers_server, task="humaneval", limit=1), tmp_path / "refused")
    config = _config(transformers_server, task="humaneval", limit=2, max_tokens=64, allow_code_execution=True)
    summary = run_eval(config, tmp_path / "he")
    samples = _check_complete(tmp_path / "he", 2)
    assert summary.sandbox and "timeout" in summary.sandbox
    assert summary.value in (0.0, 0.5, 1.0)
    assert all(s["fields"]["status"] in ("passed", "failed", "exited-early", "timeout") for s in samples)


def test_failed_requests_are_recorded_not_raised(transformers_server: Any, tmp_path: Path) -> None:
    config = EvalConfig(url=transformers_server.url, model="no-such-model", task="arc-easy", limit=2)
    summary = run_eval(config, tmp_path)
    samples = _samples(tmp_path)
    assert len(samples) == 2 and all(s["error"] for s in samples)
    assert summary.n_errors == 2 and summary.n_samples == 0 and summary.value is None


def test_arc_mode_auto_picks_loglikelihood_with_prompt_logprobs(transformers_server: Any, tmp_path: Path) -> None:
    summary = run_eval(_config(transformers_server, task="arc-easy", limit=4), tmp_path)
    _check_complete(tmp_path, 4)
    assert summary.mode == "loglikelihood" and summary.metric == "acc"
    assert summary.mode_note and summary.mode_note.startswith("auto: loglikelihood")
    assert summary.no_answer_rate == 0.0 and not summary.no_answer_flag


def test_arc_generate_gets_answers_from_the_bundled_model(transformers_server: Any, tmp_path: Path) -> None:
    """Issue #16: 7 of 8 replies were empty (a 0-shot prompt and a stop on "\n"); 5-shot, the model answers."""
    summary = run_eval(_config(transformers_server, task="arc-easy", mode="generate", limit=8), tmp_path)
    samples = _check_complete(tmp_path, 8)
    assert summary.config["shots"] == 5 and all(s["prompt"].count("Question:") == 6 for s in samples)
    assert summary.no_answer_rate is not None and summary.no_answer_rate <= 0.2, [s["output"] for s in samples]
    assert not summary.no_answer_flag


def test_zero_shot_arc_generation_is_flagged_not_scored_silently(transformers_server: Any, tmp_path: Path) -> None:
    """At 0 shots the bundled instruct model mostly ends its reply at once: the CLI and the summary flag it."""
    args = ["eval", "--url", transformers_server.url, "--model", transformers_server.model, "--task", "arc-easy",
            "--mode", "generate", "--shots", "0", "--limit", "8", "--seed", "3", "--out", str(tmp_path)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["no_answer_flag"] and summary["no_answer_rate"] > 0.2
    assert "FLAGGED" in result.output and "no extractable answer" in result.output


def test_eval_beside_load_reports_both_runs(transformers_server: Any, hf_registry: Registry, tmp_path: Path) -> None:
    """The under_load option's core: the eval while bench load keeps one request in flight, then the comparison.

    One, not a rate: the fixture's server admits 8 sequences, and on this shared CPU a Poisson rate that the
    server cannot keep up with fills it, so the eval's 4-prompt requests would be refused (429).
    """
    from bench.load.config import LoadConfig
    from bench.run.eval_scenario import changed_answers, eval_beside_load

    config = _config(transformers_server, task="arc-easy", mode="loglikelihood", limit=6)
    idle = run_eval(config, tmp_path / "idle")
    load = LoadConfig.model_validate({
        "url": transformers_server.url, "model": transformers_server.model, "api": "completions",
        "workload": {"kind": "random", "input_tokens": 32, "output_tokens": 16}, "num_requests": None,
        "duration_s": 300, "arrival": {"kind": "concurrency", "n": 1}, "seed": 1})
    loaded, load_summary = asyncio.run(eval_beside_load(config, load, tmp_path / "loaded", settle_s=1.0))
    _check_complete(tmp_path / "loaded" / "eval", 6)
    assert load_summary.num_ok >= 1 and (tmp_path / "loaded" / "load" / "requests.jsonl").exists()
    changed, compared = changed_answers(tmp_path / "idle" / SAMPLES_FILE, tmp_path / "loaded" / "eval" / SAMPLES_FILE)
    assert compared == 6 and changed == sum(a != b for a, b in zip(
        _answers_in_order(tmp_path / "idle"), _answers_in_order(tmp_path / "loaded" / "eval"), strict=True))
    assert idle.value is not None and loaded.value is not None


def _answers_in_order(out: Path) -> list[Any]:
    return [s["extracted"] for s in sorted(_samples(out), key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def hf_registry(registry: Registry) -> Registry:
    """The registry with the HF checkpoint made (bench load counts tokens with its tokenizer)."""
    from backends.prepare import prepare

    prepare(registry, "smollm2-135m-instruct", only={HF_MODEL})
    return registry


@pytest.mark.vllm
def test_evals_through_vllm_cpu(vllm_server: Any, tmp_path: Path) -> None:
    """The same evals against vLLM's own OpenAI server: loglikelihood (echo+logprobs) and generation."""
    ll = run_eval(_config(vllm_server, task="arc-easy", mode="loglikelihood", limit=4), tmp_path / "ll")
    _check_complete(tmp_path / "ll", 4)
    assert ll.value is not None and 0.0 <= ll.value <= 1.0
    squad = run_eval(_config(vllm_server, task="squad", limit=3, max_tokens=12), tmp_path / "squad")
    _check_complete(tmp_path / "squad", 3)
    assert squad.value is not None and 0.0 <= squad.value <= 1.0
