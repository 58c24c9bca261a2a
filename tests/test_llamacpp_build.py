"""The portable llama.cpp build: which CPU variants are built, the smoke run that proves a build works before it
is installed, and the message a server killed by SIGILL leaves.

The stand-in ``llama-server`` below is a deliberately broken binary (it kills itself with SIGILL when a given
CPU variant sits beside it), the case the smoke run exists for; the real build is checked by its own record.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from backends.base import EngineOptions, ServerSpec
from backends.errors import describe_exit, first_exception
from backends.llamacpp import cpu, smoke
from backends.llamacpp.build import BuildError, cmake_flags, prove_runs
from servers.launch import LaunchError, ServerHandle
from tests.helpers import stand_in_llama_server

AVX2 = frozenset(["sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"])
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
# An Intel Xeon of the Sapphire Rapids class, as its /proc/cpuinfo reads (AMX advertised).
SAPPHIRE_RAPIDS = AVX512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                            "amx_bf16", "avx_vnni"}
EPYC_ZEN3 = AVX2  # an AMD EPYC of the Zen 3 generation: AVX2, no AVX-512


def test_variants_for_an_avx2_cpu_are_baseline_and_haswell() -> None:
    assert cpu.choose_variants(EPYC_ZEN3, amx=False) == ["x64", "haswell"]


def test_amx_variant_only_where_the_kernel_grants_amx() -> None:
    assert cpu.choose_variants(SAPPHIRE_RAPIDS, amx=False) == ["x64", "haswell", "zen4"]
    assert cpu.choose_variants(SAPPHIRE_RAPIDS, amx=True) == ["x64", "haswell", "zen4", "sapphirerapids"]


def test_a_cpu_without_avx2_gets_its_widest_variant() -> None:
    assert cpu.choose_variants(frozenset({"sse4_2", "avx"}), amx=False) == ["x64", "sandybridge"]
    assert cpu.choose_variants(frozenset(), amx=False) == ["x64"]


def test_score_follows_ggml() -> None:
    variants = dict(cpu.X86_VARIANTS)
    assert cpu.score(variants["x64"], frozenset()) == 1
    assert cpu.score(variants["haswell"], frozenset({"avx"})) == 0  # a variant the CPU cannot run scores 0
    assert cpu.score(variants["sapphirerapids"], SAPPHIRE_RAPIDS) > cpu.score(variants["zen4"], SAPPHIRE_RAPIDS)


def test_variants_from_the_environment() -> None:
    assert cpu.variants_for_this_machine({cpu.VARIANTS_ENV: "all"}) is None
    assert cpu.variants_for_this_machine({cpu.VARIANTS_ENV: "haswell"}) == ["x64", "haswell"]
    with pytest.raises(ValueError, match="unknown CPU variant"):
        cpu.variants_for_this_machine({cpu.VARIANTS_ENV: "haswel"})


def test_cmake_flags_are_portable() -> None:
    flags = cmake_flags("cpu", ["x64", "haswell"], Path("/opt/llama"))
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
                 "-DBUILD_SHARED_LIBS=ON", "-DSERVEBENCH_CPU_VARIANTS=x64;haswell", "-DGGML_BACKEND_DIR=/opt/llama",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF"):
        assert flag in flags
    assert "-DGGML_NATIVE=ON" not in flags
    assert "-DGGML_CUDA=ON" not in flags and "-DGGML_CUDA=ON" in cmake_flags("cuda")


# A stand-in llama-server: it says which CPU variant ggml "loaded" (the widest lib beside it) and, when that is
# the faulting one, kills itself with SIGILL as a binary with unsupported instructions does; else it serves.
STAND_IN = """
here = os.path.dirname(os.path.abspath(__file__))
libs = sorted(f for f in os.listdir(here) if f.startswith("libggml-cpu-"))
widest = "libggml-cpu-zen4.so" if "libggml-cpu-zen4.so" in libs else libs[0]
print(f"load_backend: loaded CPU backend from {os.path.join(here, widest)}", flush=True)
if widest == FAULTING:
    os.kill(os.getpid(), signal.SIGILL)
"""


def _stage(tmp_path: Path, faulting: str) -> Path:
    for lib in ("libggml-cpu-x64.so", "libggml-cpu-zen4.so"):
        (tmp_path / lib).write_bytes(b"")
    stand_in_llama_server(tmp_path / "llama-server", f"FAULTING = {faulting!r}\n{STAND_IN}")
    return tmp_path


def _server_only(stage: Path, flavor: str, model: Path) -> list[smoke.SmokeResult]:
    return [smoke.smoke_server(stage / "llama-server", model, stage / "smoke.log", timeout_s=30)]


def test_smoke_sets_aside_a_variant_that_faults_and_keeps_the_one_that_runs(tmp_path: Path) -> None:
    stage = _stage(tmp_path, faulting="libggml-cpu-zen4.so")
    said: list[str] = []
    found = prove_runs(stage, "cpu", tmp_path / "model.gguf", said.append, smoke_all=_server_only)
    assert found["cpu_variant"] == "x64"
    assert found["disabled_variants"] == {"zen4": "llama-server was killed by SIGILL with it"}
    assert (stage / "disabled" / "libggml-cpu-zen4.so").exists() and not (stage / "libggml-cpu-zen4.so").exists()
    assert "'zen4' CPU variant faults here (SIGILL)" in said[0]


def test_smoke_refuses_a_build_that_cannot_run(tmp_path: Path) -> None:
    stage = _stage(tmp_path, faulting="libggml-cpu-x64.so")
    (stage / "libggml-cpu-zen4.so").unlink()
    with pytest.raises(BuildError) as caught:
        prove_runs(stage, "cpu", tmp_path / "model.gguf", lambda _: None, smoke_all=_server_only)
    message = str(caught.value)
    assert "failed its smoke run" in message and "it was not installed" in message
    assert "killed by SIGILL (illegal instruction: the binary uses CPU instructions this machine cannot run)" in message
    assert "python -m backends.llamacpp.build --rebuild" in message
    assert "loaded CPU backend from" in message  # the log's last lines


def test_describe_exit_names_the_signal_and_its_usual_cause() -> None:
    assert describe_exit("vllm server", 1) == "vllm server exited with code 1"
    assert "killed by SIGKILL (usually the kernel's out-of-memory killer" in describe_exit("x", -9)
    assert describe_exit("x", -4, "Rebuild it.").endswith("cannot run). Rebuild it.")


def test_the_first_exception_of_a_dead_servers_log_is_its_root_cause() -> None:
    log = "\n".join([
        "(APIServer pid=1) WARNING 12-06 19:52:22 [system_utils.py:299] Found ulimit ... like `OSError: [Errno 24]`",
        "(EngineCore pid=2) ERROR 12-06 19:52:59 [core.py:1231] RuntimeError: mutable_data_ptr<c10::Half>, "
        "expected scalar type Half but found BFloat16",
        "(APIServer pid=1)   File \"/tmp/site/vllm/v1/engine/utils.py\", line 1272, in wait_for_engine_startup",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above.",
    ])
    assert first_exception(log) == ("RuntimeError: mutable_data_ptr<c10::Half>, expected scalar type Half but "
                                    "found BFloat16")
    assert first_exception("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory") == (
        "torch.OutOfMemoryError: CUDA out of memory")
    assert first_exception("loading model\nready in 3 s\nerror: nothing here") is None


def test_a_dead_server_names_the_exception_that_killed_it(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    script = "echo 'ValueError: max_model_len 9000 is larger than the model allows'; echo wrapper; exit 1"
    with log.open("wb") as fh:
        proc = subprocess.Popen(["sh", "-c", script], stdout=fh, stderr=subprocess.STDOUT)
    proc.wait(30)
    spec = ServerSpec(backend="vllm", model_name="m", model_path=tmp_path, options=EngineOptions())
    with pytest.raises(LaunchError) as caught:
        ServerHandle(spec=spec, process=proc, log_path=log).wait_ready(5)
    assert str(caught.value).startswith(
        "vllm server exited with code 1: ValueError: max_model_len 9000 is larger than the model allows\n")


def test_a_native_server_killed_by_sigill_says_why(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(["sh", "-c", "echo warming up the model; kill -ILL $$"], stdout=fh,
                                stderr=subprocess.STDOUT)
    proc.wait(30)
    spec = ServerSpec(backend="llamacpp", model_name="m", model_path=tmp_path, options=EngineOptions())
    handle = ServerHandle(spec=spec, process=proc, log_path=log)
    with pytest.raises(LaunchError) as caught:
        handle.wait_ready(5)
    message = str(caught.value)
    assert message.startswith("llamacpp server exited with code -4: killed by SIGILL (illegal instruction")
    assert "python -m backends.llamacpp.build --rebuild" in message and "warming up the model" in message


@pytest.mark.llamacpp
def test_the_installed_build_passed_its_smoke_runs_and_serves_the_binding() -> None:
    from backends.llamacpp.build import BUILD_INFO, binary_dir, binding_lib_dir, ensure_server, install_binding

    ensure_server("cpu")
    install_binding("cpu", progress=lambda _: None)
    info = json.loads((binary_dir("cpu") / BUILD_INFO).read_text())
    assert info["smoke"] == ["llama-server", "llama-cpp-python"]
    assert "-DGGML_NATIVE=OFF" in info["cmake_flags"] and info["cpu_variant"]
    assert (binary_dir("cpu") / f"libggml-cpu-{info['cpu_variant']}.so").is_file()
    lib_dir = binding_lib_dir()
    assert lib_dir is not None and json.loads((lib_dir / "servebench-build.json").read_text()) == info


def test_the_variant_ggml_picks_is_the_widest_that_runs() -> None:
    assert cpu.best_variant(["x64", "haswell", "zen4"], SAPPHIRE_RAPIDS) == "zen4"
    assert cpu.best_variant(["x64", "haswell", "zen4"], EPYC_ZEN3) == "haswell"
    assert cpu.best_variant(["haswell"], frozenset()) is None
