"""The verdict column (#21 item 4): quantized entries against their derived_from source, paired on documents.

Per-document scores are made up so that each change, interval and verdict can be checked by hand. The expected
intervals are computed here independently of bench.report.verdict: for 0/1 scores Newcombe's (1998, method 10)
hybrid score interval for paired proportions, written from the paper's 2x2 notation with each Wilson interval
found as the roots of its quadratic; for F1-like scores the paired t-interval with t from a printed table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from backends.checkpoints import load_registry
from bench.report.render import write_report
from bench.report.verdict import VERDICT_HEADER, doc_scores, paired_change, t975, verdict, verdict_rows
from bench.run.executor import model_lineage
from bench.run.results import read_run_file
from bench.run.schema import MatrixError, QualityTarget, validate_matrix

RELATIVE_3 = QualityTarget()  # the default: a relative drop under 3%
Z = 1.959963984540054


def _wilson(x: int, n: int) -> tuple[float, float]:
    """The p with (x/n - p)^2 = Z^2 p (1 - p) / n: n (1 + Z^2/n) p^2 - (2x + Z^2) p + x^2/n = 0."""
    low, high = sorted(float(r.real) for r in np.roots([n + Z * Z, -(2 * x + Z * Z), x * x / n]))
    return low, high


def _newcombe(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe 1998, method 10, for the paired table a (both right), b (quantized right only), c (source right
    only), d (both wrong); the difference is quantized - source = (b - c) / n."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n)
    l2, u2 = _wilson(a + c, n)
    product = (a + b) * (c + d) * (a + c) * (b + d)
    ad_bc = a * d - b * c
    phi = 0.0 if product == 0 else (max(ad_bc - n / 2, 0) if ad_bc > 0 else ad_bc) / math.sqrt(product)
    dl, du = math.hypot(p1 - l1, u2 - p2), math.hypot(u1 - p1, p2 - l2)
    low = p1 - p2 - math.sqrt(dl**2 - 2 * phi * (p1 - l1) * (u2 - p2))
    high = p1 - p2 + math.sqrt(du**2 - 2 * phi * (u1 - p1) * (p2 - l2))
    return low, high


def test_identical_answers_have_a_narrow_interval_around_zero() -> None:
    """Half the documents right, the same half in both (a = d = 100, b = c = 0): phi = (100*100 - 100) / 100^2
    = 0.99, so the interval is the Wilson half-width (0.0686) times sqrt(2 * 0.01): about +-0.0097, +-1.94% of
    the source's 0.5; within the 3% target. Unpaired intervals would be about +-0.1 each."""
    source = [1.0, 0.0] * 100
    change = paired_change(source, list(source))
    assert change is not None and change.n == 200 and change.change == 0.0
    assert change.change_ci == pytest.approx(_newcombe(100, 0, 0, 100))
    low, high = _wilson(100, 200)
    assert change.change_ci == pytest.approx((-(0.5 - low) * math.sqrt(0.02), (high - 0.5) * math.sqrt(0.02)))
    assert change.relative_ci == pytest.approx((-0.019414, 0.019414), abs=1e-6)
    assert verdict(change, RELATIVE_3) == "within target"


def test_identical_answers_on_few_documents_are_inconclusive() -> None:
    """The same 20 of 40 answers right: no answer changed, but 40 documents cannot rule out a 3% drop (the
    interval is about +-0.047, +-9.4% relative)."""
    change = paired_change([1.0, 0.0] * 20, [1.0, 0.0] * 20)
    assert change is not None and change.change_ci == pytest.approx(_newcombe(20, 0, 0, 20))
    assert change.relative_ci is not None and change.relative_ci[0] == pytest.approx(-0.0936, abs=1e-4)
    assert verdict(change, RELATIVE_3) == "inconclusive"


def test_one_answer_of_80_flipped_is_inconclusive() -> None:
    """ARC-like: 45 of 80 right (0.5625); the quantized model gets one more right and loses none (a = 45, b = 1,
    c = 0, d = 34). A bootstrap interval never shows a loss here (every resample's change is >= 0); the score
    interval does: about -0.022 to +0.047, -3.9% to +8.3% relative, so a 3% relative drop is not ruled out."""
    source = [1.0] * 45 + [0.0] * 35
    quant = [1.0] * 46 + [0.0] * 34
    change = paired_change(source, quant)
    assert change is not None and change.n == 80
    assert change.source_mean == 0.5625 and change.change == pytest.approx(0.0125)
    assert change.change_ci == pytest.approx(_newcombe(45, 1, 0, 34))
    assert change.change_ci == pytest.approx((-0.02185, 0.04680), abs=1e-5)
    assert change.relative_ci == pytest.approx((-0.02185 / 0.5625, 0.04680 / 0.5625), abs=1e-4)
    assert change.relative_ci is not None and change.relative_ci[0] < -0.03 < change.relative_ci[1]
    assert verdict(change, RELATIVE_3) == "inconclusive"


def test_a_constant_drop_has_that_drop_as_its_interval() -> None:
    """SQuAD-like F1 0.5 on every document, 0.4 after quantizing: not 0/1 scores, so a paired t-interval, and
    every difference is -0.1 (sd 0): change -0.1, relative -20%, both intervals a point."""
    change = paired_change([0.5] * 50, [0.4] * 50)
    assert change is not None
    assert change.change == pytest.approx(-0.1) and change.relative == pytest.approx(-0.2)
    assert change.change_ci == pytest.approx((-0.1, -0.1)) and change.relative_ci == pytest.approx((-0.2, -0.2))
    assert verdict(change, RELATIVE_3) == "beyond target"
    # Absolute target of 0.15 points: the whole interval (-0.1) is above -0.15.
    assert verdict(change, QualityTarget(max_drop=0.15, relative=False)) == "within target"


def test_f1_scores_get_a_paired_t_interval() -> None:
    """Differences 0.1, -0.1, 0.2, 0: mean 0.05, sd sqrt(0.05 / 3), t(0.975, 3) = 3.182446 (printed tables):
    0.05 +- 3.182446 * sqrt(0.05 / 3) / 2 = 0.05 +- 0.2054."""
    change = paired_change([0.5] * 4, [0.6, 0.4, 0.7, 0.5])
    assert change is not None and change.change == pytest.approx(0.05)
    half = 3.182446 * math.sqrt(0.05 / 3) / 2
    assert change.change_ci == pytest.approx((0.05 - half, 0.05 + half))
    assert change.relative_ci == pytest.approx(((0.05 - half) / 0.5, (0.05 + half) / 0.5))
    assert verdict(change, RELATIVE_3) == "inconclusive"


def test_an_f1_interval_stops_where_the_score_would_fall_below_zero() -> None:
    """Source F1 0.1 on every document but one (0.9 there), quantized 0 everywhere: the t-interval's lower end
    (about -0.36) is a change no quantized mean >= 0 can reach; it stops at -source mean (-0.18, -100%)."""
    change = paired_change([0.1] * 9 + [0.9], [0.0] * 10)
    assert change is not None and change.change == pytest.approx(-0.18)
    half = 2.262157 * float(np.std([-0.1] * 9 + [-0.9], ddof=1)) / math.sqrt(10)
    assert change.change_ci == pytest.approx((-0.18, -0.18 + half))
    assert change.relative_ci is not None and change.relative_ci[0] == pytest.approx(-1.0)


def test_t_quantiles() -> None:
    """The table and, beyond 30 degrees of freedom, the Cornish-Fisher expansion, against printed values."""
    assert t975(1) == pytest.approx(12.7062, abs=1e-4) and t975(24) == pytest.approx(2.0639, abs=1e-4)
    assert t975(40) == pytest.approx(2.0211, abs=1e-4) and t975(60) == pytest.approx(2.0003, abs=1e-4)
    assert t975(120) == pytest.approx(1.9799, abs=1e-4) and t975(10**6) == pytest.approx(Z, abs=1e-5)
    stats = pytest.importorskip("scipy.stats")
    for df in (2, 9, 31, 49, 79, 119, 500):
        assert t975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=1e-5)


def test_one_changed_answer_in_ten_is_inconclusive() -> None:
    """Ten documents, six right; the quantized model loses one of them (a = 5, b = 0, c = 1, d = 4): change
    -0.1, relative -1/6, interval about -0.320 to +0.143, straddling the target."""
    source = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    quant = [0.0, *source[1:]]
    change = paired_change(source, quant)
    assert change is not None and change.n == 10
    assert change.change == pytest.approx(-0.1) and change.relative == pytest.approx(-1 / 6)
    assert change.change_ci == pytest.approx(_newcombe(5, 0, 1, 4))
    assert change.change_ci == pytest.approx((-0.3199, 0.1434), abs=1e-4)
    assert change.relative_ci == pytest.approx((-0.3199 / 0.6, 0.1434 / 0.6), abs=1e-3)
    assert verdict(change, RELATIVE_3) == "inconclusive"


def test_half_the_answers_lost_is_beyond_target() -> None:
    """40 right, 20 lost (a = 20, c = 20): source all right, so phi = 0 (a margin is empty)."""
    change = paired_change([1.0] * 40, [1.0, 0.0] * 20)
    assert change is not None and change.change == pytest.approx(-0.5) and change.relative == pytest.approx(-0.5)
    assert change.change_ci == pytest.approx(_newcombe(20, 0, 20, 0))
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
    # 5 documents cannot rule out a drop: the Wilson interval of 0/5 reaches 0.43 (interval about -0.26 to +0.62).
    assert zero.change_ci == pytest.approx(_newcombe(0, 1, 0, 4))
    assert verdict(zero, QualityTarget(relative=False)) == "inconclusive"
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
    # The same 19 of 39 answers: no change, but 39 documents cannot rule out a 3% drop (interval +-9.9%).
    assert arc.change.change == 0.0 and arc.change.change_ci == pytest.approx(_newcombe(19, 0, 0, 20))
    assert arc.verdict == "inconclusive"
    assert arc.weight_bytes == 30 * 2**20 and arc.source_weight_bytes == 100 * 2**20
    math_row = rows[("q4", "transformers", "math")]
    assert math_row.change is not None and math_row.change.change == pytest.approx(-0.25)
    assert math_row.change.relative == pytest.approx(-0.5) and math_row.verdict == "beyond target"
    assert math_row.change.change_ci == pytest.approx(_newcombe(10, 0, 10, 20))  # -0.380 to -0.103
    hqq = rows[("hqq", "transformers", "arc")]  # loses 2 right answers of 20 in 40 documents
    assert hqq.load_time and hqq.change is not None and hqq.change.relative == pytest.approx(-0.1)
    assert hqq.verdict in ("beyond target", "inconclusive")
    assert rows[("broken", "transformers", "arc")].verdict == "no document scored: every request failed (Quality table)"
    assert rows[("q4k", "llamacpp", "arc")].verdict == "no source eval of this task and mode"  # generate vs ll
    q4k_math = rows[("q4k", "llamacpp", "math")]
    assert q4k_math.matched == "other engine" and q4k_math.source is not None
    assert q4k_math.source.backend == "transformers" and q4k_math.verdict == "inconclusive"  # 40 documents


def test_report_has_the_verdict_table(tmp_path: Path) -> None:
    run = make_verdict_run(tmp_path, {"max_drop": 0.6, "relative": True})
    write_report([run], run)
    md = (run / "report.md").read_text()
    assert "## Quantized against source: the verdict" in md
    assert "qv: relative drop < 60%" in md
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| qv | ")]
    table = {f"{cells[3]}/{cells[1]}": cells for cells in rows if len(cells) == len(VERDICT_HEADER)}
    q4_math = table["q4/math-absdiff (exact_match), math"]
    assert q4_math[4:7] == ["bf16", "transformers/default (same engine/options)", "40"]
    assert q4_math[7:9] == ["0.500", "0.250"] and q4_math[9].startswith("-0.250 (")
    assert q4_math[10].startswith("-50.0% (") and q4_math[11] == "30 (0.30×)"
    assert q4_math[13].rstrip(" |") in ("within target", "inconclusive")
    assert table["q4/arc-easy (acc), arc"][9] == "+0.000 (-0.048 to +0.048)"  # _newcombe(19, 0, 0, 20)
    assert table["hqq/arc-easy (acc), arc"][11] == "quantized at load"
    assert table["q4k/math-absdiff (exact_match), math"][5] == "transformers/default (other engine)"
    assert "bf16/arc-easy (acc), arc" not in table  # its source is not in the run: named in the note instead
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
