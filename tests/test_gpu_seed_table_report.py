"""The committed GPU seed tables (issue #15: reports/gpu-seed-table-h100, SmolLM2 in every format, with vLLM past 64
and the evals repeated beside it; reports/gpu-seed-table-8b-h100, the 8B shape's speed; reports/gpu-seed-table-h200,
the full-size quality verdicts and batch invariance) recompute from their raw records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.load.config import LoadConfig
from bench.load.runner import rebuild_summary
from bench.report.render import write_report
from bench.report.repeat import repeat_pairs
from bench.report.tables import load_run, speedups
from bench.report.verdict import reference_rows
from bench.run.results import read_run_file

REPORTS = Path(__file__).resolve().parent.parent / "reports"
# Each committed run and the quality references its report was rendered with (none: a speed-only run).
RUNS = {
    REPORTS / "gpu-seed-table-h100" / "gpu-seed-table": ["smollm2-135m-instruct-hf", "smollm2-135m-instruct-f16"],
    REPORTS / "gpu-seed-table-8b-h100" / "gpu-seed-table-8b": None,
    REPORTS / "gpu-seed-table-h100" / "gpu-seed-table-vllm-wide": None,
    REPORTS / "gpu-seed-table-h100" / "gpu-seed-table-quality": None,  # its matrix's references
    REPORTS / "gpu-seed-table-h200" / "gpu-seed-table-quality-full": None,
    REPORTS / "gpu-seed-table-h200" / "gpu-seed-table-bi-probe": None,
    REPORTS / "gpu-seed-table-h200" / "gpu-seed-table-bi-probe-c1": None,
    REPORTS / "gpu-seed-table-h200" / "gpu-seed-table-quality-bi": None,
    REPORTS / "gpu-seed-table-h200" / "gpu-seed-table-quality-llamacpp": None,
}
H200 = REPORTS / "gpu-seed-table-h200"
# Every load point: the SLO sweeps', the KV-cache scenario's (one per context length) and the speculative one's.
SWEEP_POINTS = sorted(p for run in RUNS for scenario in ("load", "kv", "spec")
                      for p in run.glob(f"cells/*/{scenario}/*/summary.json"))
# The weights a decode step read, for MBU, where a point's load_config.json does not say (bench run has written
# them there since the 8B run): the checkpoints exist only on the device. The GGUFs' sizes are those its log lists
# (device-logs/call6-seed-table-8b.log); the bf16 safetensors are the Llama-3.1-8B shape's 8,030,261,248
# parameters at 2 bytes plus 33,880 bytes of the 4 shards' headers.
DEVICE_MODEL_BYTES = {
    "llama-3.1-8b-random": 2 * 8_030_261_248 + 33_880,
    "llama-3.1-8b-random-q8_0": 8_537_597_632,
    "llama-3.1-8b-random-q4_k_m": 4_917_561_024,
}


def _same(committed: Any, recomputed: Any, where: str) -> None:
    """Every value the committed summary holds, recomputed (floats to the last few bits: summation order);
    fields a later version added are not in the committed file and are not compared."""
    if isinstance(committed, dict):
        for key, value in committed.items():
            _same(value, recomputed.get(key), f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(committed) == len(recomputed), where
        for i, (a, b) in enumerate(zip(committed, recomputed, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(committed, float) and isinstance(recomputed, float):
        assert math.isclose(committed, recomputed, rel_tol=1e-9, abs_tol=1e-12), where
    else:
        assert committed == recomputed, where


@pytest.mark.parametrize("run", list(RUNS), ids=lambda p: p.name)
def test_the_report_renders_as_committed(run: Path, tmp_path: Path) -> None:
    write_report([run], tmp_path, quality_reference=RUNS[run])
    assert (tmp_path / "report.md").read_text() == (run / "report.md").read_text()


@pytest.mark.parametrize("summary", SWEEP_POINTS,
                         ids=lambda p: f"{p.parents[4].name}/{p.parent.parent.parent.name}/{p.parent.name}")
def test_every_sweep_point_recomputes_from_its_requests(summary: Path, tmp_path: Path) -> None:
    point = tmp_path / "point"
    shutil.copytree(summary.parent, point)  # gzipped requests.jsonl and server_metrics.jsonl, as committed
    saved = LoadConfig.model_validate(json.loads((point / "load_config.json").read_text())["config"])
    if saved.model_bytes is None and saved.model in DEVICE_MODEL_BYTES:
        saved = saved.model_copy(update={"model_bytes": DEVICE_MODEL_BYTES[saved.model]})
    rebuilt = rebuild_summary(point, config=saved).model_dump(mode="json")
    _same(json.loads(summary.read_text()), rebuilt, summary.parent.name)


def test_the_evals_repeated_in_session_10_changed_as_the_report_readme_says() -> None:
    """The quality matrix of session 10 evaluated the main run's documents again (limit: null was the default
    size): `bench report MAIN QUALITY` pairs each of its cells with the main run's (another run, concurrency 32 ->
    64), and the report's README quotes these rows."""
    main, quality = (REPORTS / "gpu-seed-table-h100" / name for name in ("gpu-seed-table", "gpu-seed-table-quality"))
    pairs = {(p.first.model, p.first.options, p.first.task): p
             for p in repeat_pairs([(main, "gpu-seed-table"), (quality, "gpu-seed-table-quality")])}
    assert len(pairs) == 9 and {p.differs for p in pairs.values()} == {"another run, concurrency 32 → 64"}

    def row(model: str, options: str, task: str) -> tuple[int, int, int, float, float]:
        p = pairs[(f"smollm2-135m-instruct{model}", options, task)]
        assert p.change is not None
        return p.answered, p.outputs_differ, p.scores_changed, round(p.change.source_mean, 3), \
            round(p.change.quant_mean, 3)

    assert row("", "gpu", "squad") == (200, 136, 43, 0.134, 0.150)  # llama.cpp Q4_1
    assert row("-q8_0", "gpu", "squad") == (200, 64, 21, 0.153, 0.151)
    assert row("-f16", "gpu", "squad") == (200, 18, 4, 0.141, 0.143)
    assert row("-hf", "gpu", "squad") == (200, 32, 6, 0.147, 0.141)  # vLLM bf16
    assert row("-hf", "gpu", "arc-easy") == (500, 0, 0, 0.522, 0.522)
    assert row("-hf", "gpu-fp8", "squad")[1:3] == (75, 14) and row("-hf-fp8", "gpu", "squad")[1:3] == (106, 23)
    assert row("-hf", "gpu-fp8", "arc-easy")[1:3] == (78, 2) and row("-hf-fp8", "gpu", "arc-easy")[1:3] == (67, 4)


def _pairs(*runs: str) -> dict[tuple[str, str, str, str, str], Any]:
    """Repeatability pairs of H200 runs, by (run A, model, options, scenario A, scenario B)."""
    return {(p.first.run, p.first.model, p.first.options, p.first.scenario, p.second.scenario): p
            for p in repeat_pairs([(H200 / run, run) for run in runs])}


def test_full_size_evals_on_vllm_change_replies_between_repeats_as_the_report_readme_says() -> None:
    """Session 11 (H200): every ARC-Easy and SQuAD document; the same SQuAD eval again at 64 in flight and at 1."""
    pairs = _pairs("gpu-seed-table-quality-full")
    by_cell = {key[1:]: (p.answered, p.outputs_differ, p.scores_changed) for key, p in pairs.items()}
    assert len(by_cell) == 9
    assert by_cell[("smollm2-135m-instruct-hf", "gpu", "squad", "squad-again")] == (1000, 152, 30)
    assert by_cell[("smollm2-135m-instruct-hf", "gpu", "squad", "squad-c1")] == (1000, 158, 34)
    assert by_cell[("smollm2-135m-instruct-hf", "gpu-fp8", "squad", "squad-again")] == (1000, 370, 89)
    assert by_cell[("smollm2-135m-instruct-hf-fp8", "gpu", "squad", "squad-again")] == (1000, 444, 102)
    assert by_cell[("smollm2-135m-instruct-hf-fp8", "gpu", "squad", "squad-c1")] == (1000, 503, 127)


def test_batch_invariant_vllm_repeats_every_reply_at_any_concurrency_and_across_server_starts() -> None:
    """batch_invariant (VLLM_BATCH_INVARIANT=1, Triton attention): two probe runs, each a fresh server, SQuAD's
    first 200 documents at 64 in flight twice (and at 1 in the second run): no reply changed anywhere."""
    pairs = _pairs("gpu-seed-table-bi-probe", "gpu-seed-table-bi-probe-c1")
    kinds = sorted(p.differs for p in pairs.values())
    assert kinds == ["another run", "another run", "concurrency 64 → 1", "concurrency 64 → 1", "nothing: a repeat",
                     "nothing: a repeat"]
    assert all(p.answered == 200 and p.outputs_differ == 0 and p.scores_changed == 0 for p in pairs.values())


def _verdicts(run: str) -> dict[tuple[str, str, str], tuple[str, float, float]]:
    """An H200 run's reference rows by (model, options, scenario): the verdict and the relative change's 95%
    interval in percent, rounded as the report prints it."""
    meta = read_run_file(H200 / run)
    assert meta is not None
    out = {}
    for r in reference_rows(H200 / run, run, meta, meta.matrix.quality_target, meta.matrix.quality_reference):
        assert r.change is not None and r.change.relative_ci is not None
        low, high = r.change.relative_ci
        out[(r.quant.model, r.quant.options, r.quant.scenario)] = (r.verdict, round(low * 100, 1),
                                                                    round(high * 100, 1))
    return out


def test_full_size_batch_invariant_cells_repeat_every_reply_and_settle_fp8_at_load_on_arc() -> None:
    """Session 14 (H200): the full-size quality matrix's gpu-bi / gpu-fp8-bi cells. No reply of the 1,000 SQuAD
    questions changed between the repeat at 64, at 1 in flight, for bf16 and both FP8 forms; FP8 at load is
    within the 3% target on all of ARC-Easy, the FP8 checkpoint still inconclusive."""
    pairs = _pairs("gpu-seed-table-quality-bi")
    assert len(pairs) == 9
    assert all(p.answered == 1000 and p.outputs_differ == 0 and p.scores_changed == 0 for p in pairs.values())
    verdicts = _verdicts("gpu-seed-table-quality-bi")
    assert verdicts[("smollm2-135m-instruct-hf", "gpu-fp8-bi", "arc-easy")] == ("within target", -1.5, 2.3)
    assert verdicts[("smollm2-135m-instruct-hf-fp8", "gpu-bi", "arc-easy")] == ("inconclusive", -3.4, 0.3)
    assert verdicts[("smollm2-135m-instruct-hf-fp8", "gpu-bi", "squad")] == ("inconclusive", -16.1, 1.8)
    assert verdicts[("smollm2-135m-instruct-hf", "gpu-fp8-bi", "squad")] == ("inconclusive", -11.1, 8.4)


def test_full_size_llamacpp_cells_settle_q8_0_on_arc_and_change_replies_with_the_batch() -> None:
    """Session 14 (H200): llama.cpp (CUDA) F16, Q8_0 and the shipped Q4_1 on every ARC-Easy (5-shot generate)
    and SQuAD document. Q8_0 is within target on ARC-Easy; greedy replies change between two identical evals at
    64 in flight, the more the lower the bits."""
    changed = {key[1]: p.outputs_differ for key, p in _pairs("gpu-seed-table-quality-llamacpp").items()
               if key[3:] == ("squad", "squad-again")}
    assert changed == {"smollm2-135m-instruct-f16": 102, "smollm2-135m-instruct-q8_0": 347,
                       "smollm2-135m-instruct": 616}
    verdicts = _verdicts("gpu-seed-table-quality-llamacpp")
    assert verdicts[("smollm2-135m-instruct-q8_0", "gpu", "arc-easy")] == ("within target", -1.5, 4.7)
    assert verdicts[("smollm2-135m-instruct", "gpu", "arc-easy")] == ("inconclusive", -3.2, 5.1)
    assert {v[0] for k, v in verdicts.items() if k[2] != "arc-easy"} == {"inconclusive"}


def test_fp8_checkpoint_variant_cells_of_session_15_are_as_the_readme_says() -> None:
    """Session 15 (H100): the FP8 checkpoint's KV-fp8 and n-gram cells. The fp8 KV holds twice the tokens but
    vLLM's own TPOT is 2.57 ms against the bf16-KV cell's 1.47 ms (session 8, another machine); n-gram speculation
    gives 1.72x at c=1 and 1.07x at c=8 against that cell's baseline."""
    run = load_run(REPORTS / "gpu-seed-table-h100" / "gpu-seed-table")
    cells = REPORTS / "gpu-seed-table-h100" / "gpu-seed-table" / "cells"

    def server_tpot(options: str) -> float:
        summary = json.loads((cells / f"vllm__smollm2-135m-instruct-hf-fp8__{options}__s0/kv/ctx512/summary.json")
                             .read_text())
        return round(summary["server"]["server_tpot_mean_ms"], 2)

    assert (server_tpot("gpu+kv-fp8"), server_tpot("gpu")) == (2.57, 1.47)
    ups = {(s.concurrency, round(s.speedup or 0, 2), round(s.acceptance_rate or 0, 2))
           for s in speedups(run.spec) if s.model == "smollm2-135m-instruct-hf-fp8"}
    assert {(c, up) for c, up, _ in ups} == {(1, 1.72), (8, 1.07)}
    assert all(0.97 <= rate <= 0.98 for _, _, rate in ups)
