"""The report's Repeatability section: the same eval twice in one cell, paired on documents (the noise floor).

A hand-made run whose per-document replies and scores are made up so that every count, score and interval can
be checked by hand. The expected interval is computed here from the paired t formula with t from a printed
table, independently of bench.report.verdict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.evals.config import EvalConfig
from bench.report.render import write_report
from bench.report.repeat import REPEAT, REPEAT_HEADER, repeat_pairs
from tests.test_report_verdict import make_verdict_run

# One sample per document: (reply, score), or None for a failed request.
Sample = tuple[Any, float] | None
SQUAD_F1 = [1.0, 0.5, 0.0, 0.2, 1.0, 0.0, 0.4, 1.0, 0.0, 0.6]
SQUAD_A: list[Sample] = [(f"a{i}", s) for i, s in enumerate(SQUAD_F1)]
# The repeat: d0 and d3 reply otherwise and score otherwise, d1 replies otherwise for the same F1, d9 failed.
SQUAD_B: list[Sample] = [("x0", 0.0), ("x1", 0.5), *SQUAD_A[2:3], ("x3", 0.8), *SQUAD_A[4:9], None]


def _config(task: str, model: str, **fields: Any) -> dict[str, Any]:
    """The config an eval records (``EvalConfig.model_dump``), for a server on a made-up port."""
    settings = {"task": task, "limit": 200, "shots": 0, "concurrency": 64, "url": "http://127.0.0.1:41613",
                "model": model, "seed": 0, **fields}
    return EvalConfig(**settings).model_dump(mode="json")


def _scenario(folder: Path, task: str, mode: str, samples: Sequence[Sample], config: dict[str, Any]) -> dict[str, Any]:
    """Write one eval's samples.jsonl; its cell.json entry."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"index": i, "doc_id": f"d{i}", "output": s[0] if s else None, "score": s[1] if s else None,
                         "fields": {}, "error": None if s else "HTTP 500"}) for i, s in enumerate(samples)]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    result = {"task": task, "model": "m", "url": "http://127.0.0.1:41613/v1", "api": "completions", "mode": mode,
              "metric": "f1", "value": 0.5, "higher_is_better": True, "ci95": None, "metrics": {},
              "n_samples": len(samples), "n_errors": 0, "latency": {}, "wall_s": 1.0,
              "samples_file": "samples.jsonl", "config": config}
    return {"kind": "eval", "result": result}


Eval = tuple[str, str, Sequence[Sample], dict[str, Any]]  # task, mode, samples, recorded config


def _cell(run: Path, backend: str, model: str, evals: dict[str, Eval]) -> None:
    cell_id = f"{backend}__{model}__gpu__s0"
    folder = run / "cells" / cell_id
    scenarios = {name: _scenario(folder / name, task, mode, samples, config)
                 for name, (task, mode, samples, config) in evals.items()}
    record = {"cell_id": cell_id, "backend": backend, "model": model, "option_set": "gpu", "seed": 0,
              "status": "ok", "scenario_names": list(evals), "options": {}, "startup_s": 1.0,
              "rss_peak_gib": 0.5, "scenarios": scenarios}
    (folder / "cell.json").write_text(json.dumps(record))


def make_repeat_run(root: Path) -> Path:
    """vLLM: SQuAD, its repeat, the same at concurrency 1, and at another limit and other shots (no pairs);
    llama.cpp: SQuAD once (never paired with vLLM's) and ARC by loglikelihood twice, one document's
    log-probabilities off in the last digits (its reply changes, its answer does not)."""
    run = root / "rp"
    run.mkdir()
    squad = _config("squad", "hf")
    _cell(run, "vllm", "hf", {
        "squad": ("squad", "generate", SQUAD_A, squad),
        "squad-again": ("squad", "generate", SQUAD_B, squad),
        "squad-c1": ("squad", "generate", SQUAD_A, _config("squad", "hf", concurrency=1)),
        "squad-all": ("squad", "generate", SQUAD_A, _config("squad", "hf", limit=1000)),
        "squad-2shot": ("squad", "generate", SQUAD_A, _config("squad", "hf", shots=2)),
    })
    arc = _config("arc-easy", "q4", mode="loglikelihood", url="http://127.0.0.1:5/v1")
    arc_a: list[Sample] = [([-1.0, -2.0 - i], float(i % 2)) for i in range(6)]
    arc_b = [([-1.0, -2.000001], 0.0), *arc_a[1:]]
    _cell(run, "llamacpp", "q4", {"squad": ("squad", "generate", SQUAD_B, _config("squad", "q4")),
                                  "arc": ("arc-easy", "loglikelihood", arc_a, arc),
                                  "arc-again": ("arc-easy", "loglikelihood", arc_b, arc)})
    return run


def test_a_repeat_counts_changed_outputs_and_scores(tmp_path: Path) -> None:
    found = repeat_pairs([(make_repeat_run(tmp_path), "rp")])
    pairs = {(p.first.backend, p.first.scenario, p.second.scenario): p for p in found}
    assert set(pairs) == {("vllm", "squad", "squad-again"), ("vllm", "squad", "squad-c1"),
                          ("vllm", "squad-again", "squad-c1"), ("llamacpp", "arc", "arc-again")}
    assert all(p.first.cell == p.second.cell for p in found)
    again = pairs[("vllm", "squad", "squad-again")]
    assert again.differs == REPEAT
    # d9 failed in the repeat: 9 documents answered in both; d0, d1 and d3 replied otherwise, d0 and d3 scored so.
    assert (again.answered, again.outputs_differ, again.scores_changed) == (9, 3, 2)
    change = again.change
    assert change is not None and change.n == 9
    assert change.source_mean == pytest.approx(4.1 / 9) and change.quant_mean == pytest.approx(3.7 / 9)
    differences = np.array([-1.0, 0, 0, 0.6, 0, 0, 0, 0, 0])
    half = 2.306004 * float(differences.std(ddof=1)) / 3  # t(0.975, 8), printed tables
    assert change.change == pytest.approx(-0.4 / 9)
    assert change.change_ci == pytest.approx((-0.4 / 9 - half, -0.4 / 9 + half), abs=1e-6)
    assert change.relative_ci == pytest.approx(((-0.4 / 9 - half) / (4.1 / 9), (-0.4 / 9 + half) / (4.1 / 9)),
                                               abs=1e-6)


def test_a_pair_at_another_concurrency_is_labelled_so(tmp_path: Path) -> None:
    pairs = {(p.first.scenario, p.second.scenario): p for p in repeat_pairs([(make_repeat_run(tmp_path), "rp")])}
    c1 = pairs[("squad", "squad-c1")]
    assert c1.differs == "concurrency 64 → 1"
    assert (c1.answered, c1.outputs_differ, c1.scores_changed) == (10, 0, 0)
    assert c1.change is not None and c1.change.change == 0.0 and c1.change.change_ci == pytest.approx((0.0, 0.0))
    assert pairs[("squad-again", "squad-c1")].differs == "concurrency 64 → 1"
    arc = pairs[("arc", "arc-again")]  # log-probabilities as replies: compared whole, not as the answer
    assert arc.differs == REPEAT and (arc.answered, arc.outputs_differ, arc.scores_changed) == (6, 1, 0)


def test_the_report_has_the_repeatability_table(tmp_path: Path) -> None:
    run = make_repeat_run(tmp_path)
    write_report([run], run)
    md = (run / "report.md").read_text()
    assert "## Repeatability" in md and "run-to-run noise of one configuration" in md
    rows = [line.strip("| ").split(" | ") for line in md.split("## Repeatability")[1].splitlines()
            if line.startswith("| rp | ")]
    assert all(len(row) == len(REPEAT_HEADER) for row in rows) and len(rows) == 4
    table = {(row[1], row[6], row[7]): row for row in rows}
    again = table[("vllm", "squad", "squad-again")]
    assert again[:6] == ["rp", "vllm", "hf", "gpu", "0", "squad (F1)"]
    assert again[8:14] == [REPEAT, "9", "3 / 9", "2 / 9", "0.456", "0.411"]
    assert again[14].startswith("-0.044 (") and again[15].startswith("-9.8% (")
    assert table[("vllm", "squad", "squad-c1")][8:12] == ["concurrency 64 → 1", "10", "0 / 10", "0 / 10"]
    assert table[("llamacpp", "arc", "arc-again")][5] == "arc-easy (acc)"
    assert "## Quality" in md and md.index("## Quality") < md.index("## Repeatability")


def test_no_pair_no_section(tmp_path: Path) -> None:
    """Another limit or other shots never pair; an eval recorded without its config pairs with nothing; a report
    without a pair has no Repeatability section."""
    run = tmp_path / "np"
    run.mkdir()
    _cell(run, "vllm", "hf", {"squad": ("squad", "generate", SQUAD_A, _config("squad", "hf")),
                              "squad-all": ("squad", "generate", SQUAD_A, _config("squad", "hf", limit=1000)),
                              "squad-2shot": ("squad", "generate", SQUAD_A, _config("squad", "hf", shots=2)),
                              "old": ("squad", "generate", SQUAD_A, {}),
                              "old-again": ("squad", "generate", SQUAD_A, {})})
    assert repeat_pairs([(run, "np")]) == []
    write_report([run], run)
    assert "## Quality" in (run / "report.md").read_text()
    assert "Repeatability" not in (run / "report.md").read_text()
    verdict_run = make_verdict_run(tmp_path)
    write_report([verdict_run], verdict_run)
    assert "Repeatability" not in (verdict_run / "report.md").read_text()


def test_the_same_cell_and_scenario_in_two_runs_reported_together_pair_as_another_run(tmp_path: Path) -> None:
    first = make_repeat_run(tmp_path)
    second = tmp_path / "rp2"  # the vLLM cell measured again: its SQuAD as the first run's repeat answered it
    second.mkdir()
    _cell(second, "vllm", "hf", {"squad": ("squad", "generate", SQUAD_B, _config("squad", "hf", concurrency=32)),
                                 "other": ("squad", "generate", SQUAD_B, _config("squad", "hf"))})
    across = [p for p in repeat_pairs([(first, "rp"), (second, "rp2")]) if p.first.run != p.second.run]
    assert [(p.first.run, p.first.scenario, p.second.run, p.second.scenario) for p in across] == \
        [("rp", "squad", "rp2", "squad")]  # the same scenario only, in the order the runs were given
    assert across[0].differs == "another run, concurrency 64 → 32"
    assert (across[0].answered, across[0].outputs_differ, across[0].scores_changed) == (9, 3, 2)
    write_report([first, second], tmp_path / "both")
    md = (tmp_path / "both" / "report.md").read_text()
    row = "| rp → rp2 | vllm | hf | gpu | 0 | squad (F1) | squad | squad | another run, concurrency 64 → 32 | 9 |"
    assert row in md
