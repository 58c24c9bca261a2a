"""bench report on hand-made run folders: tables, seed statistics, speed-ups, plots, and the HTML in Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.load.records import RequestRecord
from bench.report.render import write_report
from bench.report.tables import load_run, speedups, stops_paying

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = {"throughput_latency", "latency_cdf", "kv_context", "spec_speedup", "quality_latency"}


def _summary(tok_s: float, ttft: float, tpot: float, **server: Any) -> dict[str, Any]:
    """A load point as bench run writes it (a full LoadSummary, where its files are, peak RSS)."""
    e2e = {"p50": ttft + 15 * tpot, "p99": 2 * (ttft + 15 * tpot)}
    return {"num_requests": 4, "num_ok": 4, "num_errors": 0, "duration_s": 64 / tok_s,
            "request_throughput": tok_s / 16, "output_throughput_tok_s": tok_s, "input_throughput_tok_s": tok_s * 2,
            "total_prompt_tokens": 128, "total_output_tokens": 64, "ttft_ms": {"p50": ttft, "p99": ttft * 2},
            "tpot_ms": {"p50": tpot}, "itl_ms": {"p50": tpot}, "e2e_ms": e2e, "e2e_sched_ms": e2e, "queue_ms": {},
            "goodput_fraction": None, "dir": "no-records", "rss_peak_gib": 1.25, "server": server}


def _records(folder: Path, ttft_s: float, tpot_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(6):
        sent = i * 1.0
        first = sent + ttft_s * (1 + 0.1 * i)
        times = tuple(first + k * tpot_s for k in range(16))
        rec = RequestRecord(request_id=f"r{i}", index=i, scheduled_t=sent, sent_t=sent, end_t=times[-1],
                            first_token_t=first, token_times=times, prompt_tokens=32, output_tokens=16)
        lines.append(rec.to_json())
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")


def _eval(task: str, metric: str, value: float) -> dict[str, Any]:
    result = {"task": task, "model": "m", "url": "http://127.0.0.1:9/v1", "api": "completion", "mode": "generate",
              "metric": metric, "value": value, "higher_is_better": metric != "absdiff_mean",
              "ci95": [value - 0.1, value + 0.1], "metrics": {metric: value}, "n_samples": 8, "n_errors": 0,
              "latency": {"e2e_s": {"p50": 0.5}}, "wall_s": 1.0, "samples_file": "samples.jsonl", "config": {}}
    return {"kind": "eval", "result": result}


def _cell(run: Path, backend: str, options: str, seed: int, scenarios: dict[str, Any], status: str = "ok",
          **opts: Any) -> None:
    cell_id = f"{backend}__m__{options}__s{seed}"
    folder = run / "cells" / cell_id
    folder.mkdir(parents=True, exist_ok=True)
    record = {"cell_id": cell_id, "backend": backend, "model": "m", "option_set": options,
              "base_option_set": options.split("+")[0], "seed": seed, "status": status,
              "scenario_names": list(scenarios),
              "options": {"kv_cache_dtype": "auto", "prefix_caching": False, **opts}, "startup_s": 2.0,
              "rss_peak_gib": 1.5, "scenarios": scenarios}
    if status == "skipped":
        record["reason"] = "backend 'vllm' does not support kv_cache_dtype='q8'"
    if status == "failed":
        record["error"] = "; ".join(f"{k}: {v['error']}" for k, v in scenarios.items() if "error" in v)
    (folder / "cell.json").write_text(json.dumps(record))


def _kv(tokens: int, kv_bytes: float | None, prefix: dict[str, Any] | None = None) -> dict[str, Any]:
    per_gib = tokens / (kv_bytes / 2**30) if kv_bytes else None
    kv = {"capacity_tokens": tokens, "kv_bytes": kv_bytes, "source": "test", "tokens_per_gib": per_gib}
    lengths = {str(n): {**_summary(10, 100 + n, 50 + n / 10), "max_concurrency_fit": {"kv": tokens // (n + 8),
                                                                                      "served": 4}}
               for n in (64, 256)}
    return {"kind": "kv-cache", "kv": kv, "max_batch": 8, "lengths": lengths, **({"prefix": prefix} if prefix else {})}


def _spec(method: str, c1: float, c4: float, accept: float | None = None) -> dict[str, Any]:
    server = {"spec_acceptance_rate": accept, "spec_acceptance_length": 1 + 3 * accept} if accept else {}
    return {"kind": "speculative", "method": method, "points": {
        "c1": {**_summary(c1, 100, 1000 / c1, **server), "concurrency": 1},
        "c4": {**_summary(c4, 200, 4000 / c4, **server), "concurrency": 4}}}


def make_run(root: Path, run_id: str, scale: float = 1.0) -> Path:
    """A run folder with every scenario kind, two seeds of one configuration and a skipped cell."""
    run = root / run_id
    matrix = {"name": "t", "models": ["m"], "backends": ["transformers", "llamacpp"],
              "scenarios": [{"kind": "load", "points": [{"concurrency": 1}, {"concurrency": 4}]}]}
    run.mkdir(parents=True)
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": run_id, "matrix": matrix, "environment": {
        "cpu": "test cpu", "cpu_count": 2, "gpus": [], "packages": {"servebench": "0"}, "git_sha": "abc"}}))
    for seed, jitter in ((0, 0.0), (1, 2.0)):
        c4 = run / "cells" / f"transformers__m__default__s{seed}" / "load" / "c4"
        _records(c4, 0.2 + jitter / 100, 0.05)
        load = {"kind": "load", "mode": "points", "best": None, "points": {
            "c1": _summary(10 * scale + jitter, 100 + jitter, 60),
            "c4": {**_summary(30 * scale + jitter, 200 + jitter, 80 + jitter), "dir": "load/c4"}}}
        _cell(run, "transformers", "default", seed, {
            "load": load, "kv-cache": _kv(2048, None), "speculative": _spec("none", 10, 30),
            "arc": _eval("arc-easy", "accuracy", 0.5 + jitter / 10), "squad": _eval("squad", "f1", 0.3),
            "math": _eval("math-absdiff", "absdiff_mean", 12.0)})
    _cell(run, "llamacpp", "default", 0, {"kv-cache": _kv(2048, 24 * 2**20), "speculative": _spec("none", 20, 60)})
    _cell(run, "llamacpp", "default+kv-q8", 0, {"kv-cache": _kv(2048, 12.75 * 2**20)}, kv_cache_dtype="q8")
    prefix = {"shared": _summary(5, 50, 40, prefix_cache_hit_rate=0.8),
              "unique": _summary(5, 150, 40, prefix_cache_hit_rate=0.0)}
    _cell(run, "llamacpp", "default+prefix", 0, {"kv-prefix": _kv(2048, 24 * 2**20, prefix)}, prefix_caching=True)
    _cell(run, "llamacpp", "default+spec-ngram", 0, {"speculative": _spec("ngram", 30, 48, accept=0.6),
                                                      "broken": {"kind": "load", "status": "failed", "error": "x"}},
          status="failed", speculative="ngram")
    _cell(run, "vllm", "default+kv-q8", 0, {}, status="skipped", kv_cache_dtype="q8")
    return run


def test_each_option_set_s_speculation_is_compared_with_its_own_baseline(tmp_path: Path) -> None:
    """Two option sets speculating on one model (bf16 and fp8 weights): each row shows its own speed-up."""
    run = tmp_path / "spec2"
    matrix = {"name": "t", "models": ["m"], "backends": ["vllm"],
              "scenarios": [{"kind": "speculative", "methods": ["none", "ngram"]}]}
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": "spec2", "matrix": matrix, "environment": {
        "cpu": "test cpu", "cpu_count": 2, "gpus": [], "packages": {"servebench": "0"}, "git_sha": "abc"}}))
    _cell(run, "vllm", "gpu", 0, {"speculative": _spec("none", 100, 400)})
    _cell(run, "vllm", "gpu+spec-ngram", 0, {"speculative": _spec("ngram", 250, 600, accept=0.9)})
    _cell(run, "vllm", "gpu-fp8", 0, {"speculative": _spec("none", 100, 200)})
    _cell(run, "vllm", "gpu-fp8+spec-ngram", 0, {"speculative": _spec("ngram", 150, 500, accept=0.9)})
    write_report([run], run)
    rows = {(cells[4], cells[7]): cells[10] for line in (run / "report.md").read_text().splitlines()
            if line.startswith("| spec2 | vllm |") and (cells := [c.strip() for c in line.split("|")])[6] == "ngram"}
    assert rows == {("gpu+spec-ngram", "1"): "2.50×", ("gpu+spec-ngram", "4"): "1.50×",
                    ("gpu-fp8+spec-ngram", "1"): "1.50×", ("gpu-fp8+spec-ngram", "4"): "2.50×"}


def test_tables_and_statistics(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1")
    data = load_run(run)
    ups = speedups(data.spec)
    assert [(u.concurrency, round(u.speedup or 0, 2)) for u in ups] == [(1, 1.5), (4, 0.8)]
    assert stops_paying(ups) == 4
    paths = write_report([run], run)
    md = (run / "report.md").read_text()
    assert {p.stem for p in paths if p.suffix == ".png"} == PLOTS
    for text in ("Summary across seeds", "math AbsDiff", "ARC-E acc", "SQuAD F1", "TTFT p50 ms @ load/c4",
                 "max out tok/s at SLO", "peak mem GiB", "MBU", "$/1M out tok"):
        assert text in md
    row = next(line for line in md.splitlines() if line.startswith("| r1 | transformers | m | default | 2 |"))
    assert "0.600 ± 0.141" in row  # ARC over seeds 0.5 and 0.7
    assert "31.0 ± 1.4" in row  # max throughput at the SLO: c4 at 30 and 32 tok/s
    assert "201.0 ± 1.4" in row  # TTFT p50 at load/c4
    assert "1.50×" in md and "0.80×" in md and "| c4 |" in md  # speed-up, and where it stops paying
    assert "1.88×" in md  # q8 KV: 24 MiB -> 12.75 MiB for the same 2048 tokens
    assert "80%" in md and "0%" in md  # prefix hit rate shared / unique
    assert "does not support kv_cache_dtype='q8'" in md and "broken: x" in md


def test_cost_needs_a_price(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1")
    write_report([run], run, gpu_hour_usd=3.6)
    md = (run / "report.md").read_text()
    # $3.6/h at 30 tok/s = 1e-3 $/s / 30 tok/s * 1e6 = 33.33 $/1M; at 32 tok/s 31.25
    assert "32.29 ± 1.47" in md and "$3.6/h" in md


def test_scaling_across_gpus_per_gpu_throughput_and_cost(tmp_path: Path) -> None:
    run = tmp_path / "tp"
    (run).mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": "tp", "matrix": {
        "name": "tp", "models": ["m"], "backends": ["vllm"], "scenarios": [{"kind": "kv-cache"}],
        "gpu_hour_usd": 3.6}}))

    def sweep(points: dict[str, tuple[float, bool]]) -> dict[str, Any]:
        return {"kind": "load", "mode": "rate", "best": None, "points": {
            v: {**_summary(tok_s, 100, 20), "passed": ok, "saturated": not ok} for v, (tok_s, ok) in points.items()}}

    kv1, kv2 = {"capacity_tokens": 800_000}, {"capacity_tokens": 1_900_000}
    _cell(run, "vllm", "tp1", 0, {"sweep": sweep({"5": (600, True), "10": (1200, True), "20": (1500, False)})},
          tensor_parallel_size=1)
    _cell(run, "vllm", "tp2", 0, {"sweep": sweep({"10": (1200, True), "20": (2000, True), "40": (2600, False)})},
          tensor_parallel_size=2)
    for name, kv in (("tp1", kv1), ("tp2", kv2)):
        path = run / "cells" / f"vllm__m__{name}__s0" / "cell.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "kv": kv}))
    write_report([run], run)
    md = (run / "report.md").read_text()
    section = md.split("## Scaling across GPUs")[1].split("## ")[0]
    tp1 = next(line for line in section.splitlines() if line.startswith("| tp | vllm | m | tp1 |"))
    tp2 = next(line for line in section.splitlines() if line.startswith("| tp | vllm | m | tp2 |"))
    # The best passing step: 1200 tok/s on one GPU; 2000 tok/s on two, 1000 per GPU. The failed steps are ignored.
    assert "| 1 | sweep/10 | 75.00 | 1,200.0 | 1,200.0 |" in tp1 and tp1.rstrip().endswith("| 800,000 | 2.0 |")
    assert "| 2 | sweep/20 | 125.00 | 2,000.0 | 1,000.0 |" in tp2 and "| 1,900,000 |" in tp2
    # Cost counts every GPU: $3.6/h at 1200 tok/s on one GPU is 0.83 $/1M; at 2000 tok/s on two, 1.00.
    summary = md.split("## Summary across seeds")[1].split("## ")[0]
    assert "TTFT p50 ms @ best at SLO" in summary  # a sweep has no fixed headline point
    assert "| 0.83 |" in next(line for line in summary.splitlines() if "| tp1 |" in line)
    assert "| 1.00 |" in next(line for line in summary.splitlines() if "| tp2 |" in line)
    # One GPU everywhere: no scaling section.
    single = make_run(tmp_path, "r1")
    write_report([single], single)
    assert "Scaling across GPUs" not in (single / "report.md").read_text()


def test_runs_side_by_side(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "before"), make_run(tmp_path, "after", scale=2.0)
    out = tmp_path / "cmp"
    write_report([a, b], out)
    md = (out / "report.md").read_text()
    assert "servebench report: before, after" in md
    assert "| before | transformers | m | default | 2 |" in md and "| after | transformers | m | default | 2 |" in md


def test_bench_report_command(tmp_path: Path) -> None:
    from bench.cli import build_app

    app = build_app()
    run = make_run(tmp_path, "r1")
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "o"), "--headline", "load/c1"])
    assert result.exit_code == 0, result.output
    assert "TTFT p50 ms @ load/c1" in (tmp_path / "o" / "report.md").read_text()
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a run folder" in bad.output


_CHECK = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'servebench-check';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
                                           data: i.src.startsWith('data:image/png;base64,')})),
    headers: [...document.querySelectorAll('th')].map(t => t.textContent),
    tables: document.querySelectorAll('table').length});
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(report: Path, work: Path) -> dict[str, Any]:
    """Load the report (plus a checking script) in headless Chromium with no network; what the DOM holds."""
    assert CHROMIUM is not None
    page = work / "check.html"
    page.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", f"--user-data-dir={work / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'<pre id="servebench-check">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no check output; chromium rc={proc.returncode}\n{proc.stderr[-2000:]}"
    found: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1")
    write_report([run], run)
    report = run / "report.html"
    text = report.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "report.html must not load anything"
    dom = render_in_chromium(report, tmp_path)
    assert {i["alt"] for i in dom["images"]} == PLOTS
    assert all(i["data"] and i["w"] > 100 and i["h"] > 100 for i in dom["images"]), dom["images"]
    for header in ("math AbsDiff p50 ↓", "SQuAD F1", "max out tok/s at SLO", "speed-up", "KV capacity tok",
                   "hit rate shared-prefix", "$/1M out tok"):
        assert header in dom["headers"]
    assert dom["tables"] >= 6


def test_scenarios_skipped_inside_a_cell_that_ran_are_listed_with_the_reason(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": "r", "matrix": {
        "name": "r", "models": ["m"], "backends": ["llamacpp"], "scenarios": [{"kind": "kv-cache"}]}}))
    reason = ("arc-ll: llamacpp returns no prompt logprobs (echo=true), which --mode loglikelihood needs; "
              "use mode: generate on this engine")
    # As run_eval_scenario records it: no kind, status skipped, the reason; the cell itself is ok.
    _cell(run, "llamacpp", "default", 0, {"arc-gen": _eval("arc-easy", "accuracy", 0.4),
                                          "arc-ll": {"status": "skipped", "reason": reason + "\nsecond line"}})
    _cell(run, "vllm", "default", 0, {}, status="skipped")
    data = load_run(run)
    by_cell = {(p.cell, p.scenario): (p.status, p.reason) for p in data.problems}
    assert by_cell == {("llamacpp__m__default__s0", "arc-ll"): ("skipped", reason),
                       ("vllm__m__default__s0", ""): ("skipped", "backend 'vllm' does not support kv_cache_dtype='q8'")}
    assert [e.scenario for e in data.evals] == ["arc-gen"]  # the eval that ran is still shown
    write_report([run], run)
    md = (run / "report.md").read_text()
    problems = md.split("## Cells skipped or failed")[1]
    assert f"| r | llamacpp__m__default__s0 | arc-ll | skipped | {reason} |" in problems
    assert "| r | vllm__m__default__s0 | – | skipped | backend 'vllm' does not support" in problems
    assert "skipped inside a cell that ran" in problems
    assert "arc-ll" in (run / "report.html").read_text()


def test_eval_no_answer_share_is_shown_and_over_20_percent_flagged(tmp_path: Path) -> None:
    """A seed whose answers were mostly not extractable is FLAGGED, never averaged into the seed table."""
    run = make_run(tmp_path, "r1")
    cells = run / "cells"
    for seed, rate in ((0, 0.05), (1, 0.45)):
        cell = json.loads((cells / f"transformers__m__default__s{seed}" / "cell.json").read_text())
        cell["scenarios"]["arc"]["result"].update(no_answer_rate=rate, no_answer_flag=rate > 0.2, mode="generate")
        if seed == 0:
            loaded = {**cell["scenarios"]["arc"]["result"], "value": 0.45}
            cell["scenarios"]["arc"]["under_load"] = {"load": "r2", "dir": "arc/under-load", "result": loaded,
                                                      "load_summary": _summary(10, 100, 60), "delta": -0.05,
                                                      "changed_answers": 1, "compared": 8}
        (cells / f"transformers__m__default__s{seed}" / "cell.json").write_text(json.dumps(cell))
    write_report([run], run)
    md = (run / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| r1 | transformers | m | default | 2 |"))
    assert "FLAGGED: >20% no answer (other seeds 0.500)" in row  # seed 1 (0.7) left out of the mean
    quality = [line for line in md.splitlines() if "| arc-easy | generate |" in line]
    assert len(quality) == 2
    assert "| 5% |" in quality[0] and "0.450 (Δ -0.050), 1/8 answers changed @ r2" in quality[0]
    assert "| 45% FLAGGED |" in quality[1]


def test_load_rows_say_whether_the_client_kept_up_and_throughput_held() -> None:
    from bench.report.render import health_cells
    from bench.run.results import LoadPoint

    def cells(**fields: Any) -> list[str]:
        return health_cells(LoadPoint.model_validate({**_summary(10, 100, 60), **fields}))

    def steady(held: bool) -> dict[str, Any]:
        return {"first_third_tok_s": 10.0, "last_third_tok_s": 10.0 if held else 5.0, "ratio": None, "steady": held}

    def prompts(mismatch: bool) -> dict[str, Any]:
        return {"checked": 4, "ours": 100, "server": 130 if mismatch else 100, "max_diff_fraction": 0.3 if mismatch
                else 0.0, "mismatch": mismatch}

    behind = cells(client={"workers": 1, "behind": True, "lag_p99_ms": 31.25}, steady_state=steady(False),
                   server={"tpot_gap_ms": 3.456, "ttft_gap_ms": 12.5})  # fmt: skip
    assert behind == ["BEHIND", "31.25", "NO", "12.50", "3.46", "–"]
    assert cells(client={"workers": 1}, steady_state=steady(True)) == ["ok", "–", "yes", "–", "–", "–"]
    assert cells() == ["–", "–", "–", "–", "–", "–"]  # results from before these figures existed
    assert cells(prompt_tokens_check=prompts(True))[-1] == "MISMATCH"
    assert cells(prompt_tokens_check=prompts(False))[-1] == "ok"


def test_seed_cells_give_the_95_percent_interval() -> None:
    from bench.report.render import _pm

    assert _pm([30.0, 32.0]) == "31.0 ± 1.4 (95%: 18.3–43.7)"  # t(0.975, 1) = 12.706
    assert _pm([30.0]) == "30.0" and _pm([]) == "–"


def test_report_shows_lag_gap_steadiness_per_run_and_the_spread_over_three_repeats(tmp_path: Path) -> None:
    """#20's "done when": per run the client lag, the server-vs-client gap and the steady-state flag; over ≥ 3
    repeats (seeds) of one configuration, mean ± std and the 95% interval."""
    run = tmp_path / "r20"
    matrix = {"name": "t", "models": ["m"], "backends": ["vllm"],
              "scenarios": [{"kind": "load", "points": [{"concurrency": 256}]}]}
    run.mkdir(parents=True)
    (run / "run.yaml").write_text(yaml.safe_dump({"run_id": "r20", "matrix": matrix, "environment": {
        "cpu": "test cpu", "cpu_count": 2, "gpus": [], "packages": {"servebench": "0"}, "git_sha": "abc"}}))
    steady = {"first_third_tok_s": 100.0, "last_third_tok_s": 100.0, "ratio": 1.0, "steady": True}
    for seed, (tok_s, lag, behind) in enumerate(((13293.0, 41.5, True), (21881.0, 2.25, False),
                                                 (15357.0, 3.5, False))):
        point = {**_summary(tok_s, 300.0, 10.0, ttft_gap_ms=20.0 + seed, tpot_gap_ms=4.25 + seed),
                 "client": {"workers": 1 + 3 * seed, "behind": behind, "lag_p99_ms": lag},
                 "steady_state": {**steady, "steady": seed != 0}}  # fmt: skip
        _cell(run, "vllm", "default", seed, {"load": {"kind": "load", "mode": "points", "best": None,
                                                      "points": {"c256": point}}})
    write_report([run], run)
    md = (run / "report.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| run | backend | model | options | seed | scenario"))
    for column in ("client", "client lag p99 ms", "steady", "TTFT gap ms", "TPOT gap ms"):
        assert f"| {column} |" in header
    rows = {int(line.split("|")[5]): line for line in lines if line.startswith("| r20 | vllm | m | default | ")
            and "| load |" in line}  # fmt: skip
    assert "| BEHIND | 41.50 | NO | 20.00 | 4.25 |" in rows[0]
    assert "| ok | 2.25 | yes | 21.00 | 5.25 |" in rows[1] and "| ok | 3.50 | yes | 22.00 | 6.25 |" in rows[2]
    seeds = next(line for line in lines if line.startswith("| r20 | vllm | m | default | 3 |"))
    assert "16,843.7 ± 4,482.9 (95%: 5,706.7–27,980.6)" in seeds  # max out tok/s over the three repeats
