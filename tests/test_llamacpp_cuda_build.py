"""The CUDA flavour of the llama.cpp build, checked on a machine without a GPU: the flags it configures with
(extra flags from the environment, the detected CUDA architecture, the number of jobs), and the smoke run's
proof that the model really ran on the GPU rather than on the CPU that ggml falls back to quietly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.llamacpp import smoke
from backends.llamacpp.build import (
    CMAKE_ARGS_ENV,
    JOBS_ENV,
    BuildError,
    build_jobs,
    cmake_flags,
    extra_cmake_args,
    parse_compute_caps,
)
from tests.helpers import stand_in_llama_server

CUBLAS = "/site/nvidia/cu13"
ENV_ARGS = (f"-DCMAKE_CUDA_ARCHITECTURES=90 -DCUDA_cublas_LIBRARY={CUBLAS}/lib/libcublas.so "
            f"'-DCMAKE_CUDA_FLAGS=-I{CUBLAS}/include -lineinfo'")


def test_extra_cmake_args_are_shell_words_and_come_last() -> None:
    extra = extra_cmake_args({CMAKE_ARGS_ENV: ENV_ARGS})
    assert extra == ["-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCUDA_cublas_LIBRARY={CUBLAS}/lib/libcublas.so",
                     f"-DCMAKE_CUDA_FLAGS=-I{CUBLAS}/include -lineinfo"]
    flags = cmake_flags("cuda", ["x64"], Path("/opt/llama"), extra, cuda_arch="86")
    assert flags[-3:] == extra
    # the flag from the environment wins: the detected architecture is not added beside it
    assert not any(f.startswith("-DCMAKE_CUDA_ARCHITECTURES=86") for f in flags)
    assert extra_cmake_args({}) == []
    with pytest.raises(BuildError, match=CMAKE_ARGS_ENV):
        extra_cmake_args({CMAKE_ARGS_ENV: "-DX='unterminated"})


def test_cuda_architecture_from_the_visible_gpus() -> None:
    assert parse_compute_caps("9.0\n") == "90"
    assert parse_compute_caps("9.0\n9.0\n8.6\n") == "86;90"
    assert parse_compute_caps("") is None
    assert parse_compute_caps("[N/A]\n") is None
    flags = cmake_flags("cuda", cuda_arch="90")
    assert "-DGGML_CUDA=ON" in flags and "-DCMAKE_CUDA_ARCHITECTURES=90" in flags
    typed = cmake_flags("cuda", extra=["-DCMAKE_CUDA_ARCHITECTURES:STRING=90a"], cuda_arch="90")
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" not in typed and typed[-1] == "-DCMAKE_CUDA_ARCHITECTURES:STRING=90a"


def test_the_cpu_flags_do_not_change() -> None:
    assert cmake_flags("cpu", ["x64"], Path("/opt/llama"), [], cuda_arch="90") == cmake_flags(
        "cpu", ["x64"], Path("/opt/llama"))
    assert not any("CUDA" in f for f in cmake_flags("cpu", cuda_arch="90"))


def test_build_jobs() -> None:
    assert build_jobs("cpu", {}) == 2
    assert build_jobs("cuda", {}) >= 2
    assert build_jobs("cuda", {JOBS_ENV: "16"}) == 16 and build_jobs("cpu", {JOBS_ENV: "3"}) == 3
    with pytest.raises(BuildError, match=JOBS_ENV):
        build_jobs("cuda", {JOBS_ENV: "0"})


GPU_LOG = """load_backend: loaded CUDA backend from /x/libggml-cuda.so
ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):
  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB
load_backend: loaded CPU backend from /x/libggml-cpu-zen4.so
load_tensors: offloaded 31/31 layers to GPU
"""


def test_gpu_offload_is_read_from_the_log() -> None:
    assert smoke.gpu_offload_problem(GPU_LOG) is None
    assert smoke.gpu_device(GPU_LOG) == "NVIDIA H100 80GB HBM3, compute capability 9.0"
    cpu_only = "load_backend: loaded CPU backend from /x/libggml-cpu-zen4.so\n"
    assert "no GPU backend was loaded" in (smoke.gpu_offload_problem(cpu_only) or "")
    none_offloaded = GPU_LOG.replace("offloaded 31/31", "offloaded 0/31")
    assert "no layers were offloaded" in (smoke.gpu_offload_problem(none_offloaded) or "")
    assert smoke.gpu_device(cpu_only) is None


def _server(tmp_path: Path, log: str) -> Path:
    """A stand-in llama-server that prints the given log lines, then serves a completion."""
    return stand_in_llama_server(tmp_path / "llama-server", f"print({log!r}, flush=True)")


def test_a_cuda_smoke_that_ran_on_the_cpu_fails(tmp_path: Path) -> None:
    server = _server(tmp_path, "load_backend: loaded CPU backend from /x/libggml-cpu-x64.so")
    result = smoke.smoke_server(server, tmp_path / "m.gguf", tmp_path / "smoke.log", gpu_layers=True, timeout_s=30)
    assert not result.ok and result.returncode is None and "no GPU backend was loaded" in result.detail
    # the CPU flavour asks for no GPU, so the same server passes
    assert smoke.smoke_server(server, tmp_path / "m.gguf", tmp_path / "smoke.log", timeout_s=30).ok


def test_a_cuda_smoke_on_the_gpu_names_the_card(tmp_path: Path) -> None:
    server = _server(tmp_path, GPU_LOG)
    result = smoke.smoke_server(server, tmp_path / "m.gguf", tmp_path / "smoke.log", gpu_layers=True, timeout_s=30)
    assert result.ok and result.detail.endswith("on NVIDIA H100 80GB HBM3, compute capability 9.0")


def test_a_failed_cuda_build_is_not_retried_for_each_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.llamacpp import build

    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path))
    calls: list[str] = []

    def failing(flavor: build.Flavor, progress: object) -> Path:
        calls.append(flavor)
        raise BuildError("nvcc not found")

    monkeypatch.setattr(build, "_build", failing)
    with pytest.raises(BuildError, match="nvcc not found"):
        build.ensure_server("cuda")
    assert build.failed_marker("cuda").read_text() == "nvcc not found\n"
    with pytest.raises(BuildError, match=r"failed on this machine before .* nvcc not found\. To try again"):
        build.ensure_server("cuda")  # a server start: fails at once
    assert calls == ["cuda"]
    with pytest.raises(BuildError, match="nvcc not found"):
        build.ensure_server("cpu")
    with pytest.raises(BuildError, match="nvcc not found"):
        build.ensure_server("cpu")  # a CPU build is tried again; it leaves no marker
    assert calls == ["cuda", "cpu", "cpu"] and not build.failed_marker("cpu").exists()

    def working(flavor: build.Flavor, progress: object) -> Path:
        calls.append(flavor)
        return build.server_binary(flavor)

    monkeypatch.setattr(build, "_build", working)
    build.ensure_server("cuda", retry_failed=True)  # the build command tries again, and a success clears it
    assert calls[-1] == "cuda" and not build.failed_marker("cuda").exists()
