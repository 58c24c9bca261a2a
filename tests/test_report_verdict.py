"""The verdict column (#21 item 4): quantized entries against their derived_from source, paired on documents.

Per-document scores are made up so that each change, interval and verdict can be checked by hand: a constant
difference on every document has a bootstrap interval of exactly that difference, and a difference on no
document has an interval of exactly zero, however different the documents are from each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends.checkpoints import load_registry
from bench.report.render import write_report
from bench.report.verdict import VERDICT_HEADER, doc_scores, paired_change, verdict, verdict_rows
from bench.run.executor import model_lineage
from bench.run.results import read_run_file
from bench.run.schema import MatrixError, QualityTarget, validate_matrix

RELATIVE_3 = QualityTarget()  # the default: a relative drop under 3%


def test_identical_answers_are_within_target_with_a_zero_interval() -> None:
    """Half the documents right, the same half in both: unpaired intervals would be about ±0.1 each, the paired
    one is exactly 0."""
    source = [1.0, 0.0] * 100
    change = paired_change(source, list(source))
    assert change is not None and change.n == 200
    assert change.change == 0.0 and change.change_ci == (0.0, 0.0) and change.relative_ci == (0.0, 0.0)
    assert verdict(change, RELATIVE_3) == "within target"


def test_a_constant_drop_has_that_drop_as_its_interval() -> None:
    """SQuAD-like F1 0.5 on every document, 0.4 after quantizing: change -0.1, relative -20% on every resample."""
    change = paired_change([0.5] * 50, [0.4] * 50)
    assert change is not None
    assert change.change == pytest.approx(-0.1) and change.relative == pytest.approx(-0.2)
    assert change.change_ci == pytest.approx((-0.1, -0.1)) and change.relative_ci == pytest.approx((-0.2, -0.2))
    assert verdict(change, RELATIVE_3) == "beyond target"
    # Absolute target of 0.15 points: the whole interval (-0.1) is above -0.15.
    assert verdict(change, QualityTarget(max_drop=0.15, relative=False)) == "within target"


def test_one_changed_answer_in_ten_is_inconclusive() -> None:
    """Ten documents, six right; the quantized model loses one of them: change -0.1, relative -1/6. No resample
    can show a gain, so the interval's top is 0 (above -3%); one that draws the lost document twice or more
    shows a drop of 0.2 or more (below -3%): the interval straddles the target."""
    source = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    quant = [0.0, *source[1:]]
    change = paired_change(source, quant)
    assert change is not None and change.n == 10
    assert change.change == pytest.approx(-0.1) and change.relative == pytest.approx(-1 / 6)
    assert change.change_ci is not None and change.relative_ci is not None
    assert change.change_ci[1] == 0.0 and change.change_ci[0] <= -0.2
    assert change.relative_ci[1] == 0.0 and change.relative_ci[0] < -0.03
    assert verdict(change, RELATIVE_3) == "inconclusive"


def test_half_the_answers_lost_is_beyond_target() -> None:
    change = paired_change([1.0] * 40, [1.0, 0.0] * 20)
    assert change is not None and change.change == pytest.approx(-0.5) and change.relative == pytest.approx(-0.5)
    assert change.relative_ci is not None and change.relative_ci[1] < -0.03
    assert verdict(change, RELATIVE_3) == "beyond target"


def test_edge_cases() -> None:
    assert paired_change([], []) is None
    single = paired_change([1.0], [0.0])
    assert single is not None and single.change_ci is None
    assert verdict(single, RELATIVE_3) == "inconclusive (no interval)"
    zero = paired_change([0.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0])
    assert zero is not None and zero.relative is None and zero.change == pytest.approx(0.2)
    assert verdict(zero, RELATIVE_3) == "inconclusive (source scores 0)"
    assert verdict(zero, QualityTarget(relative=False)) == "within target"  # never below 0
    with pytest.raises(ValueError, match="differ in length"):
        paired_change([1.0], [1.0, 0.0])


def test_matrix_quality_target() -> None:
    base = {"models": ["m"], "backends": ["transformers"], "scenarios": [{"kind": "load"}]}
    assert validate_matrix(base).quality_target == QualityTarget(max_drop=0.03, relative=True)
    matrix = validate_matrix({**base, "quality_target": {"max_drop": 0.02, "relative": False}})
    assert matrix.quality_target.describe() == "absolute drop < 0.020"
    assert RELATIVE_3.describe() == "relative drop < 3%"
    with pytest.raises(MatrixError, match=r"quality_target\.max_dorp"):
        validate_matrix({**base, "quality_target": {"max_dorp": 0.02}})
    with pytest.raises(MatrixError, match=r"quality_target\.max_drop"):
        validate_matrix({**base, "quality_target": {"max_drop": 0}})


# ---- a run folder ------------------------------------------------------------------------------------


def _samples(folder: Path, scores: Sequence[float | None], task: str = "arc-easy") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, score in enumerate(scores):
        fields = {"exact_match": score, "absdiff": 1e82} if task == "math-absdiff" else {}
        lines.append(json.dumps({"index": i, "doc_id": f"d{i}", "score": 1e82 if task == "math-absdiff" else score,
                                 "fields": fields, "error": None if score is not None else "HTTP 500"}))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


def _eval_cell(run: Path, backend: str, model: str, evals: dict[str, tuple[str, str, Sequence[float | None]]]) -> None:
    cell_id = f"{backend}__{model}__default__s0"
    folder = run / "cells" / cell_id
    scenarios = {}
    for name, (task, mode, scores) in evals.items():
        _samples(folder / name, scores, task)
        result = {"task": task, "model": model, "url": "http://127.0.0.1:9/v1", "api": "completions", "mode": mode,
                  "metric": "accuracy", "value": 0.5, "higher_is_better": True, "ci95": None, "metrics": {},
                  "n_samples": len(scores), "n_errors": 0, "latency": {}, "wall_s": 1.0,
                  "samples_file": "samples.jsonl", "config": {}}
        scenarios[name] = {"kind": "eval", "result": result}
    record = {"cell_id": cell_id, "backend": backend, "model": model, "option_set": "default", "seed": 0,
              "status": "ok", "scenario_names": list(evals), "options": {}, "startup_s": 1.0,
              "rss_peak_gib": 0.5, "scenarios": scenarios}
    (folder / "cell.json").write_text(json.dumps(record))


def make_verdict_run(root: Path, target: dict[str, Any] | None = None) -> Path:
    """bf16 on Transformers; a 4-bit entry on Transformers (same engine) and on llama.cpp (only there: other
    engine); an entry quantized at load; a model whose source is not in the run."""
    run = root / "qv"
    run.mkdir()
    matrix: dict[str, Any] = {"name": "qv", "models": ["bf16"], "backends": ["transformers"],
                              "scenarios": [{"kind": "load"}]}
    if target is not None:
        matrix["quality_target"] = target
    models = {"bf16": {"format": "hf", "derived_from": "gguf-q4_1", "weight_bytes": 100 * 2**20},
              "q4": {"format": "gptq", "derived_from": "bf16", "weight_bytes": 30 * 2**20},
              "hqq": {"format": "hqq", "derived_from": "bf16", "recipe": {"load_time": True}},
              "broken": {"format": "gptq", "derived_from": "bf16"}}
    resumed = {"q4k": {"format": "gguf", "derived_from": "bf16", "weight_bytes": 40 * 2**20}}
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": "qv", "matrix": matrix, "models": models,
                                                  "resumes": [{"models": resumed}], "environment": {}}))
    right_half = [1.0, 0.0] * 20
    _eval_cell(run, "transformers", "bf16", {"arc": ("arc-easy", "loglikelihood", right_half),
                                             "math": ("math-absdiff", "generate", [1.0] * 20 + [0.0] * 20)})
    # q4: the same answers on ARC except document d0 failed (HTTP 500: not paired); GSM8K exact match halves.
    _eval_cell(run, "transformers", "q4", {"arc": ("arc-easy", "loglikelihood", [None, *right_half[1:]]),
                                           "math": ("math-absdiff", "generate", [1.0, 0.0] * 10 + [0.0] * 20)})
    _eval_cell(run, "transformers", "hqq", {"arc": ("arc-easy", "loglikelihood", [1.0, 0.0] * 18 + [0.0] * 4)})
    _eval_cell(run, "transformers", "broken", {"arc": ("arc-easy", "loglikelihood", [None] * 40)})  # all HTTP 500
    # llama.cpp ran ARC by generation: no loglikelihood source to pair with; its math pairs across engines.
    _eval_cell(run, "llamacpp", "q4k", {"arc": ("arc-easy", "generate", [0.0] * 40),
                                        "math": ("math-absdiff", "generate", [1.0] * 20 + [0.0] * 20)})
    return run


def test_verdict_rows_pair_documents_and_match_the_source_cell(tmp_path: Path) -> None:
    run = make_verdict_run(tmp_path)
    meta = read_run_file(run)
    assert meta is not None and set(meta.lineage()) == {"bf16", "q4", "hqq", "broken", "q4k"}  # with the resume's
    assert doc_scores(run / "cells" / "transformers__q4__default__s0" / "math" / "samples.jsonl",
                      "math-absdiff")["d0"] == 1.0  # exact match, not the 1e82 absolute difference
    rows = {(r.quant.model, r.quant.backend, r.quant.scenario): r for r in verdict_rows(run, "qv", meta, RELATIVE_3)}
    bf16 = rows[("bf16", "transformers", "arc")]
    assert bf16.source is None and bf16.verdict == "no source cell in this run"
    arc = rows[("q4", "transformers", "arc")]
    assert arc.matched == "same engine/options" and arc.change is not None and arc.change.n == 39
    assert arc.change.change == 0.0 and arc.verdict == "within target"
    assert arc.weight_bytes == 30 * 2**20 and arc.source_weight_bytes == 100 * 2**20
    math_row = rows[("q4", "transformers", "math")]
    assert math_row.change is not None and math_row.change.change == pytest.approx(-0.25)
    assert math_row.change.relative == pytest.approx(-0.5) and math_row.verdict == "beyond target"
    hqq = rows[("hqq", "transformers", "arc")]  # loses 2 right answers of 20 in 40 documents
    assert hqq.load_time and hqq.change is not None and hqq.change.relative == pytest.approx(-0.1)
    assert hqq.verdict in ("beyond target", "inconclusive")
    assert rows[("broken", "transformers", "arc")].verdict == "no document scored: every request failed (Quality table)"
    assert rows[("q4k", "llamacpp", "arc")].verdict == "no source eval of this task and mode"  # generate vs ll
    q4k_math = rows[("q4k", "llamacpp", "math")]
    assert q4k_math.matched == "other engine" and q4k_math.source is not None
    assert q4k_math.source.backend == "transformers" and q4k_math.verdict == "within target"


def test_report_has_the_verdict_table(tmp_path: Path) -> None:
    run = make_verdict_run(tmp_path, {"max_drop": 0.6, "relative": True})
    write_report([run], run)
    md = (run / "report.md").read_text()
    assert "## Quantized against source: the verdict" in md
    assert "qv: relative drop < 60%" in md
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| qv | ")]
    table = {f"{cells[3]}/{cells[1]}": cells for cells in rows if len(cells) == len(VERDICT_HEADER)}
    q4_math = table["q4/math-absdiff (exact_match)"]
    assert q4_math[4:7] == ["bf16", "transformers/default (same engine/options)", "40"]
    assert q4_math[7:9] == ["0.500", "0.250"] and q4_math[9].startswith("-0.250 (")
    assert q4_math[10].startswith("-50.0% (") and q4_math[11] == "30 (0.30×)"
    assert q4_math[13].rstrip(" |") in ("within target", "inconclusive")
    assert table["q4/arc-easy (acc)"][9] == "+0.000 (+0.000 to +0.000)"
    assert table["hqq/arc-easy (acc)"][11] == "quantized at load"
    assert table["q4k/math-absdiff (exact_match)"][5] == "transformers/default (other engine)"
    assert "bf16/arc-easy (acc)" not in table  # its source is not in the run: named in the note instead
    assert "Not compared (their source is not in the run): bf16 (from gguf-q4_1)." in md
    assert "inf" not in md.lower().replace("info", "") and "nan" not in md


def test_model_lineage_follows_derived_from(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.safetensors").write_bytes(b"\0" * 4096)
    (tmp_path / "q.gguf").write_bytes(b"\0" * 1024)
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"default": "base", "models": [
        {"name": "base", "format": "hf", "path": "base"},
        {"name": "q", "format": "gguf", "path": "q.gguf", "derived_from": "base",
         "recipe": {"tool": "bench quantize", "to": "gguf-q4_k_m"}}]}))
    found = model_lineage(load_registry(tmp_path / "models.yaml"), ["q", "nonexistent-hub/x"])
    assert found == {"q": {"format": "gguf", "derived_from": "base", "weight_bytes": 1024,
                           "recipe": {"tool": "bench quantize", "to": "gguf-q4_k_m"}},
                     "base": {"format": "hf", "derived_from": None, "recipe": None, "weight_bytes": 4096}}


def test_old_gsm8k_records_show_their_median_and_no_inf() -> None:
    """A record written while the headline was the mean (5e82 from run-on replies, inf on a GPU run, its
    interval nan) shows its median in the seed table, and no table cell says inf or nan."""
    from bench.evals.config import EvalSummary, LatencyStats
    from bench.report.render import _fmt
    from bench.report.tables import headline_value

    old = EvalSummary(task="math-absdiff", model="m", url="u", api="completions", mode="generate",
                      metric="absdiff_mean", value=float("inf"), higher_is_better=False,
                      ci95=(float("nan"), float("nan")), metrics={"absdiff_mean": float("inf"), "absdiff_median": 31.0},
                      n_samples=200, n_errors=0, latency=LatencyStats(), wall_s=1.0, samples_file="s", config={})
    assert headline_value(old) == 31.0
    assert headline_value(old.model_copy(update={"metrics": {}})) == float("inf")  # no median: the value, shown "–"
    assert _fmt(float("inf")) == "–" and _fmt(float("nan"), 3) == "–" and _fmt(5e82, 0).startswith("50,000")
    new = old.model_copy(update={"metric": "absdiff_median", "value": 30.0})
    assert headline_value(new) == 30.0
