"""bench run: the matrix schema, cell expansion with skip reasons, failure isolation and --resume (no servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from backends import registry as backends
from backends.base import EngineOptions
from bench.models.registry import Registry, load_registry
from bench.run.cells import default_matrix, expand, resolve, variant_label
from bench.run.executor import read_cell, read_run_matrix, run_matrix, write_run_yaml
from bench.run.schema import (
    KVCacheScenario,
    LoadScenario,
    Matrix,
    MatrixError,
    OptionSet,
    SpeculativeScenario,
    load_matrix,
    validate_matrix,
)

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


def test_default_matrix_is_small(registry: Registry) -> None:
    m = default_matrix(registry)
    assert "transformers" in m.backends and m.native_variants
    assert [s.kind for s in m.scenarios] == ["load"]
    load = m.scenarios[0]
    assert isinstance(load, LoadScenario)
    assert [p.concurrency for p in load.points] == [1, 8] and load.requests_per_point <= 16


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
    marker = {"cell_id": finished.name, "status": "ok", "backend": "transformers", "scenarios": {}, "marker": 1}
    (finished / "cell.json").write_text(json.dumps(marker))
    # A cell that never finished (no valid cell.json) would run again; a finished one is reused as is.
    records = run_matrix(m, registry, run_dir, Console(quiet=True), resume=True)
    assert records[0] == marker
    assert records[1]["status"] == "skipped"
    (finished / "cell.json").write_text('{"status": "running"')  # torn write: not finished
    assert read_cell(finished) is None
