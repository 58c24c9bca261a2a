"""The GPU seed table's part 2 (issue #15): its matrix, its registry and the device script agree."""

from __future__ import annotations

import re
from pathlib import Path

from backends.checkpoints import load_registry
from backends.prepare import _order
from bench.run.cells import expand, select
from bench.run.schema import LoadScenario, load_matrix

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
BASE = "llama-3.1-8b-random"


def test_the_matrix_is_the_slo_sweep_only_with_a_price_and_no_quality() -> None:
    matrix = load_matrix(GPU / "seed-table-8b.yaml")
    (scenario,) = matrix.scenarios
    assert isinstance(scenario, LoadScenario) and scenario.sweep is not None
    assert scenario.slo is not None and (scenario.slo.ttft_ms, scenario.slo.tpot_ms) == (500, 25)
    assert matrix.gpu_hour_usd and not matrix.quality_reference
    assert {o.name: o.options.quantization for o in matrix.option_sets} == {"gpu": None, "gpu-fp8": "fp8"}


def test_the_registry_derives_the_ggufs_from_the_random_model_once() -> None:
    registry = load_registry(GPU / "models-8b.yaml")
    steps = [(e.name, (e.recipe or {}).get("source")) for e in _order(registry, BASE)]
    assert steps == [(f"{BASE}-f16", BASE), (f"{BASE}-q8_0", f"{BASE}-f16"), (f"{BASE}-q4_k_m", f"{BASE}-f16")]
    matrix = load_matrix(GPU / "seed-table-8b.yaml")
    # every model of the matrix is in the registry but the EXL2/EXL3 ones, which are not made (skipped cells)
    names = {e.name for e in registry.models}
    assert [m for m in matrix.models if m not in names] == [f"{BASE}-exl2-4.0bpw", f"{BASE}-exl3-4.0bpw"]


def test_every_cell_the_device_script_runs_is_a_cell_of_the_matrix() -> None:
    script = (GPU / "seed_table_8b.sh").read_text()
    ids = {m.replace("${BASE}", BASE).replace("$BASE", BASE)
           for m in re.findall(r'"((?:llamacpp|vllm|transformers)__[^"\s]+__s0)"', script)}
    assert len(ids) == 7
    assert f"vllm__{BASE}-bnb-4bit__gpu__s0" in ids  # vLLM's 4-bit cell: bitsandbytes NF4 at load
    cells = expand(load_matrix(GPU / "seed-table-8b.yaml"), load_registry(GPU / "models-8b.yaml"))
    assert {c.cell_id for c in select(cells, sorted(ids))} == ids  # select() refuses an id that matches no cell


def test_prepare_leaves_out_the_entry_quantized_at_load() -> None:
    """The bnb-4bit entry names the base's own weights (vLLM quantizes them as it loads): nothing to make."""
    registry = load_registry(GPU / "models-8b.yaml")
    bnb = registry.get(f"{BASE}-bnb-4bit")
    assert bnb.format == "bnb-4bit" and bnb.derived_from == BASE and (bnb.recipe or {}).get("load_time")
    assert bnb.path == registry.get(BASE).path  # the same folder, resolved on the device
    assert bnb.name not in [e.name for e in _order(registry, BASE)]
