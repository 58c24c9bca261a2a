"""Issue #15's headline: every format against the bf16 quality_reference, and the best format per engine at the SLO.

A hand-made run: vLLM serves the bf16 HF checkpoint under ``gpu`` and under ``gpu-fp8`` (FP8 at load), and a
W4A16 entry; llama.cpp serves the GGUF F16 and Q8_0 on an H100 and the bundled Q4_1 on an H200. Each cell has
an SLO sweep and one ARC eval whose per-document scores are made up, so each pairing, change and ranking can
be checked by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.report.headline import formats_at_slo, ranked
from bench.report.render import write_report
from bench.report.tables import load_run
from bench.report.verdict import REFERENCE_HEADER, reference_rows
from bench.run.results import read_run_file
from bench.run.schema import QualityTarget, validate_matrix

ROOT = Path(__file__).resolve().parent.parent
H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
REFERENCES = ["hf", "f16"]
RIGHT_HALF = [1.0, 0.0] * 20  # 20 of 40 right


def _point(folder: Path, label: str, tok_s: float, passed: bool, card: str) -> dict[str, Any]:
    """A sweep step as bench run writes it, with an NVML sample naming the card in its gpu.jsonl."""
    point_dir = folder / f"concurrency-{label}"
    point_dir.mkdir(parents=True, exist_ok=True)
    (point_dir / "gpu.jsonl").write_text(json.dumps({"t": 1.0, "gpu": 0, "name": card, "mem_used_bytes": 2**30,
                                                     "power_w": 100.0}) + "\n")
    e2e = {"p50": 100.0 + 15 * 10}
    return {"num_requests": 64, "num_ok": 64, "num_errors": 0, "duration_s": 10.0, "request_throughput": tok_s / 128,
            "output_throughput_tok_s": tok_s, "input_throughput_tok_s": tok_s * 4, "total_prompt_tokens": 1,
            "total_output_tokens": 1, "ttft_ms": {"p50": 10.0 * float(label)}, "tpot_ms": {"p50": float(label)},
            "itl_ms": {}, "e2e_ms": e2e, "e2e_sched_ms": e2e, "queue_ms": {}, "goodput_fraction": None,
            "dir": f"load/concurrency-{label}", "rss_peak_gib": 1.0, "passed": passed, "saturated": not passed,
            "server": {"gpu_mem_peak_gib": tok_s / 1000}}


def _cell(run: Path, backend: str, model: str, options: str, sweep: dict[str, tuple[float, bool]],
          arc: Sequence[float], card: str = H100, **opts: Any) -> None:
    cell_id = f"{backend}__{model}__{options}__s0"
    folder = run / "cells" / cell_id
    points = {label: _point(folder / "load", label, tok_s, ok, card) for label, (tok_s, ok) in sweep.items()}
    (folder / "arc").mkdir(parents=True)
    (folder / "arc" / "samples.jsonl").write_text("".join(
        json.dumps({"index": i, "doc_id": f"d{i}", "score": s, "fields": {}, "error": None}) + "\n"
        for i, s in enumerate(arc)))
    result = {"task": "arc-easy", "model": model, "url": "http://127.0.0.1:9/v1", "api": "completions",
              "mode": "generate", "metric": "acc", "value": sum(arc) / len(arc), "higher_is_better": True,
              "ci95": None, "metrics": {}, "n_samples": len(arc), "n_errors": 0, "latency": {}, "wall_s": 1.0,
              "samples_file": "samples.jsonl", "config": {}}
    record = {"cell_id": cell_id, "backend": backend, "model": model, "option_set": options,
              "base_option_set": options, "seed": 0, "status": "ok", "scenario_names": ["load", "arc"],
              "options": {"device": "cuda", "max_batch": 64, **opts}, "startup_s": 1.0, "rss_peak_gib": 0.5,
              "scenarios": {"load": {"kind": "load", "mode": "concurrency", "best": None, "points": points},
                            "arc": {"kind": "eval", "result": result}}}
    (folder / "cell.json").write_text(json.dumps(record))


def make_run(root: Path, references: list[str] | None = REFERENCES, name: str = "st") -> Path:
    """The seed table in small: see the module docstring."""
    run = root / name
    run.mkdir()
    matrix: dict[str, Any] = {
        "name": "st", "models": ["hf", "hf-w4a16", "f16", "q8_0", "q4_1"], "backends": ["vllm", "llamacpp"],
        "option_sets": [{"name": "gpu", "options": {"device": "cuda", "max_batch": 64}},
                        {"name": "gpu-fp8", "options": {"device": "cuda", "max_batch": 64, "quantization": "fp8"}}],
        "gpu_hour_usd": 3.6,
        "scenarios": [{"kind": "load", "name": "load", "sweep": {"mode": "concurrency", "start": 1, "max_value": 8},
                       "slo": {"ttft_ms": 500, "tpot_ms": 25}},
                      {"kind": "eval", "name": "arc", "task": "arc-easy", "mode": "generate"}]}
    if references is not None:
        matrix["quality_reference"] = references
    # Every entry is derived from the bundled Q4_1 GGUF, as in models.yaml.
    models = {m: {"format": "gguf" if m in ("f16", "q8_0", "q4_1") else "hf", "derived_from": "q4_1",
                  "weight_bytes": size * 2**20}
              for m, size in (("hf", 270), ("hf-w4a16", 90), ("f16", 270), ("q8_0", 145))}
    models["q4_1"] = {"format": "gguf", "weight_bytes": 90 * 2**20}
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": name, "matrix": matrix, "models": models,
                                                  "environment": {"gpus": [{"name": H100}]}}))
    _cell(run, "vllm", "hf", "gpu", {"1": (500, True), "2": (900, True), "4": (1200, False)}, RIGHT_HALF)
    # FP8 at load: 1100 tok/s at c4; loses 10 of the 20 right answers.
    _cell(run, "vllm", "hf", "gpu-fp8", {"2": (800, True), "4": (1100, True), "8": (1500, False)},
          [1.0, 0.0] * 10 + [0.0] * 20, quantization="fp8")
    _cell(run, "vllm", "hf-w4a16", "gpu", {"2": (1000, True), "4": (1300, False)}, RIGHT_HALF)
    _cell(run, "llamacpp", "f16", "gpu", {"1": (300, True), "2": (800, True)}, [1.0] * 30 + [0.0] * 10)
    # Q8_0: the F16's answers but for one lost (d0); the fastest llama.cpp format on the H100.
    _cell(run, "llamacpp", "q8_0", "gpu", {"2": (950, True), "4": (2500, False)}, [0.0] + [1.0] * 29 + [0.0] * 10)
    # Q4_1 on another card: faster, but never ranked against the H100's formats.
    _cell(run, "llamacpp", "q4_1", "gpu", {"2": (2000, True)}, [1.0] * 20 + [0.0] * 20, card=H200)
    return run


def test_matrix_quality_reference_defaults_to_none() -> None:
    base = {"models": ["m"], "backends": ["vllm"], "scenarios": [{"kind": "load"}]}
    assert validate_matrix(base).quality_reference == ()
    assert validate_matrix({**base, "quality_reference": ["hf", "f16"]}).quality_reference == ("hf", "f16")


def test_a_run_yaml_from_before_the_field_reads(tmp_path: Path) -> None:
    meta = read_run_file(make_run(tmp_path, references=None))
    assert meta is not None and meta.matrix.quality_reference == ()


def _rows(run: Path) -> dict[tuple[str, str, str], Any]:
    meta = read_run_file(run)
    rows = reference_rows(run, "st", meta, QualityTarget(), REFERENCES)
    return {(r.quant.backend, r.quant.model, r.quant.options): r for r in rows}


def test_fp8_option_set_is_compared_with_the_same_model_unquantized_on_the_same_engine(tmp_path: Path) -> None:
    rows = _rows(make_run(tmp_path))
    assert ("vllm", "hf", "gpu") not in rows and ("llamacpp", "f16", "gpu") not in rows  # the references
    fp8 = rows[("vllm", "hf", "gpu-fp8")]
    assert fp8.source is not None and (fp8.source.backend, fp8.source.model, fp8.source.options) == \
        ("vllm", "hf", "gpu")
    assert fp8.matched == "same engine/options" and fp8.load_time
    assert fp8.change is not None and fp8.change.n == 40 and fp8.change.relative == pytest.approx(-0.5)
    assert fp8.verdict == "beyond target"
    w4 = rows[("vllm", "hf-w4a16", "gpu")]
    assert w4.source is not None and w4.source.options == "gpu" and w4.change is not None
    assert w4.change.change == 0.0 and w4.weight_bytes == 90 * 2**20 and w4.source_weight_bytes == 270 * 2**20


def test_gguf_q8_0_is_compared_with_f16_on_llamacpp(tmp_path: Path) -> None:
    """The HF reference is first in order, but llama.cpp has no HF cell: the F16 on the same engine wins over
    the HF on another engine."""
    rows = _rows(make_run(tmp_path))
    q8 = rows[("llamacpp", "q8_0", "gpu")]
    assert q8.source is not None and (q8.source.backend, q8.source.model) == ("llamacpp", "f16")
    assert q8.source_model == "f16" and q8.matched == "same engine/options" and not q8.load_time
    assert q8.change is not None and q8.change.change == pytest.approx(-1 / 40)
    assert q8.change.relative == pytest.approx(-1 / 30) and q8.verdict == "inconclusive"


def test_headline_picks_the_most_tokens_per_second_at_the_slo_per_engine_and_card(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path))
    groups = ranked(formats_at_slo(run, 3.6))
    assert list(groups) == [("st", "llamacpp", H100), ("st", "llamacpp", H200), ("st", "vllm", H100)]
    best = {key[1:]: [(f.key.model, f.key.options, f.mean("tok_s")) for f in formats] for key, formats in
            groups.items()}
    # vLLM: the failed steps (1200, 1300, 1500 tok/s) do not count; FP8 at 1100 beats W4A16's 1000 and bf16's 900.
    assert best[("vllm", H100)] == [("hf", "gpu-fp8", 1100), ("hf-w4a16", "gpu", 1000), ("hf", "gpu", 900)]
    assert best[("llamacpp", H100)] == [("q8_0", "gpu", 950), ("f16", "gpu", 800)]
    assert best[("llamacpp", H200)] == [("q4_1", "gpu", 2000)]
    fp8 = groups[("st", "vllm", H100)][0]
    assert fp8.points == "load/4" and fp8.mean("ttft_ms") == 40.0 and fp8.mean("tpot_ms") == 4.0
    assert fp8.mean("memory_gib") == pytest.approx(1.5)  # the highest GPU memory of the cell's steps
    assert fp8.mean("cost") == pytest.approx(3.6 / 3600 / 1100 * 1e6)  # the seed table's $/1M at that throughput


def test_report_opens_with_the_headline(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report([run], run)
    md = (run / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline: the best format per engine at the SLO"
    headline = md.split("## Headline")[1].split("\n## ")[0]
    vllm = next(line for line in headline.splitlines() if line.startswith("| st | vllm |"))
    assert f"| {H100} | hf / gpu-fp8 | 1,100.0 | load/4 | 40.0 | 4.0 | 1.50 | 0.91 |" in vllm
    assert "arc -50.0% (" in vllm and vllm.rstrip(" |").endswith("beyond target")
    llama = next(line for line in headline.splitlines() if line.startswith(f"| st | llamacpp | {H100} |"))
    assert "| q8_0 / gpu | 950.0 | load/2 |" in llama and "arc -3.3% (" in llama
    assert f"| st | llamacpp | {H200} | q4_1 / gpu | 2,000.0 |" in headline
    assert f"- st · vllm · {H100}: hf / gpu: 900.0 out tok/s at SLO (82% of the best); quality: reference" \
        in headline
    # Every step of f16's sweep met the SLO: its figure is a lower bound, and the headline says so; the FP8 best
    # (steps above load/4 failed) is not marked.
    assert f"- st · llamacpp · {H100}: f16 / gpu: 800.0 out tok/s at SLO (84% of the best) (top of the sweep); " \
        "quality: reference" in headline
    assert "| load/4 |" in vllm and "the figure is a lower bound" in headline
    assert f"st ran on 2 GPU models ({H100}, {H200}): each card is ranked on its own." in headline
    table = md.split("## Each format against the reference")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| st | ")]
    assert all(len(r) == len(REFERENCE_HEADER) for r in rows)
    fp8 = next(r for r in rows if r[3:5] == ["hf", "gpu-fp8"])
    assert fp8[5:7] == ["hf", "vllm/gpu (same engine/options)"] and fp8[12] == "quantized at load"
    q8 = next(r for r in rows if r[3] == "q8_0")
    assert q8[5:7] == ["f16", "llamacpp/gpu (same engine/options)"] and q8[12] == "145 (0.54×)"
    html = (run / "report.html").read_text()
    assert html.index("Headline: the best format") < html.index("Summary across seeds")
    assert f"<li>st · vllm · {H100}: hf / gpu: 900.0 out tok/s" in html


def _without(md: str, *titles: str) -> str:
    """The report without the named sections."""
    parts = md.split("\n## ")
    return "\n## ".join(p for p in parts if not any(p.startswith(t) for t in titles))


def test_a_run_without_quality_reference_renders_as_before(tmp_path: Path) -> None:
    """Without the field: no headline and no reference table, and the derived_from verdict instead; every other
    section as with it."""
    plain = make_run(tmp_path, references=None, name="st")
    write_report([plain], tmp_path / "plain")
    md = (tmp_path / "plain" / "report.md").read_text()
    assert "Headline" not in md and "against the reference" not in md
    assert "## Quantized against source: the verdict" in md  # the derived_from verdict stays
    (tmp_path / "with").mkdir()
    referenced = make_run(tmp_path / "with", name="st")
    write_report([referenced], tmp_path / "with" / "out")
    with_reference = (tmp_path / "with" / "out" / "report.md").read_text()
    assert "Quantized against source" not in with_reference  # the reference table replaces the verdict table
    assert _without(with_reference, "Headline", "Each format against the reference") \
        == _without(md, "Quantized against source: the verdict")
    # bench report --quality-reference gives an old run the headline.
    write_report([plain], tmp_path / "override", quality_reference=REFERENCES)
    assert (tmp_path / "override" / "report.md").read_text() == with_reference


def test_a_speed_only_run_gets_the_headline_without_quality(tmp_path: Path) -> None:
    """A matrix without evals (the 8B shape's random weights) still opens with the best format per engine at the
    SLO; no format shows a quality, and the note says why."""
    run = make_run(tmp_path, references=None)
    meta = yaml.safe_load((run / "run.yaml").read_text())
    meta["matrix"]["scenarios"] = [s for s in meta["matrix"]["scenarios"] if s["kind"] != "eval"]
    (run / "run.yaml").write_text(yaml.safe_dump(meta))
    write_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    headline = md.split("## Headline")[1].split("\n## ")[0]
    assert md.index("## Headline") < md.index("## Summary across seeds")
    assert "| st | vllm | " + H100 + " | hf / gpu-fp8 | 1,100.0 |" in headline
    rows = [line for line in headline.splitlines() if line.startswith("| st |")]
    assert rows and all(line.endswith("| no eval |") for line in rows)
    assert "st: speed only (the matrix has no evals), so its formats show no quality." in headline


@pytest.mark.parametrize("name", ["cpu-matrix", "quant-verdict"])
def test_committed_examples_render_byte_identically(name: str, tmp_path: Path) -> None:
    """The committed example runs (no quality_reference in their run.yaml) render as committed."""
    run = ROOT / "reports" / "examples" / name
    write_report([run], tmp_path)
    assert (tmp_path / "report.md").read_text() == (run / "report.md").read_text()
