"""llama-server option mapping and refusals: pure functions, no server started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends import registry as backends
from backends.base import EngineOptions, ServerSpec
from backends.checkpoints import Registry, load_registry
from backends.errors import UnsupportedOptionError
from backends.llamacpp import config
from backends.llamacpp.gguf_meta import context_length, read_metadata
from backends.llamacpp.launcher import LlamaServerLauncher
from servers.launch import build_spec

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def model_path(registry: Registry) -> Path:
    return registry.path_of(MODEL)


def _spec(model_path: Path, draft: Path | None = None, api_key: str | None = None, **opts: Any) -> ServerSpec:
    return ServerSpec(backend="llamacpp", model_name=MODEL, model_path=model_path,
                      options=EngineOptions(**opts), port=8123, api_key=api_key, draft_path=draft,
                      model_format="gguf")


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


REFUSED = [
    ({"kv_cache_dtype": "fp8"}, "gguf", "kv_cache_dtype", "no fp8 KV cache"),
    ({"kv_cache_dtype": "q6"}, "gguf", "kv_cache_dtype", "no llama-server mapping"),
    ({"kv_cache_dtype": "k8v4"}, "gguf", "kv_cache_dtype", "no llama-server mapping"),
    ({"speculative": "eagle:/models/eagle"}, "gguf", "speculative", "EAGLE heads need a GGUF conversion"),
    ({"tensor_parallel_size": 2}, "gguf", "parallelism", "tensor/pipeline/data parallel must be 1"),
    ({"pipeline_parallel_size": 2}, "gguf", "parallelism", "tensor/pipeline/data parallel must be 1"),
    ({"data_parallel_size": 2}, "gguf", "parallelism", "tensor/pipeline/data parallel must be 1"),
    ({"dtype": "float16"}, "gguf", "dtype", "fixed by the GGUF file"),
    ({"kv_cache_memory_bytes": 1 << 30}, "gguf", "kv_cache_memory_bytes", "set max_model_len and max_batch"),
    ({"quantization": "awq"}, "gguf", "quantization", "the GGUF file's own"),
    ({}, "hf", "format", "llama-server loads GGUF only"),
    ({}, "gptq", "format", "llama-server loads GGUF only"),
]


@pytest.mark.parametrize(("opts", "fmt", "option", "why"), REFUSED)
def test_unsupported_values_are_refused_with_the_documented_message(opts: dict[str, Any], fmt: str,
                                                                    option: str, why: str) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        backends.validate("llamacpp", EngineOptions(**opts), fmt)
    message = str(info.value)
    assert info.value.option == option
    assert message.startswith(f"backend 'llamacpp' does not support {option}=")
    assert config.REFUSALS[option] in message and why in message


def test_build_spec_refuses_before_anything_starts(registry: Registry) -> None:
    with pytest.raises(UnsupportedOptionError, match="no fp8 KV cache"):
        build_spec(registry, "llamacpp", MODEL, EngineOptions(kv_cache_dtype="fp8"))
    with pytest.raises(UnsupportedOptionError, match="GGUF only"):
        build_spec(registry, "llamacpp", "smollm2-135m-instruct-hf", EngineOptions())


def test_supported_values_pass(registry: Registry) -> None:
    for opts in ({}, {"kv_cache_dtype": "q8"}, {"kv_cache_dtype": "q4"}, {"speculative": "ngram"},
                 {"prefix_caching": True}, {"quantization": "gguf"}, {"device": "cpu"}):
        backends.validate("llamacpp", EngineOptions(**opts), "gguf")


def test_basic_command(model_path: Path) -> None:
    spec = _spec(model_path, api_key="sk-x", max_batch=4, max_model_len=512, threads=3)
    cmd = LlamaServerLauncher(cuda=False).command(spec)
    assert cmd[0].endswith("/bin/llama.cpp-0.3.36-cpu-dl1/llama-server")
    assert _after(cmd, "-m") == str(model_path)
    assert _after(cmd, "--alias") == MODEL
    assert (_after(cmd, "--host"), _after(cmd, "--port")) == ("127.0.0.1", "8123")
    assert "--api-key" not in cmd and not any("sk-x" in arg for arg in cmd)  # `ps` shows argv to every user
    assert _after(cmd, "--parallel") == "4" and "--cont-batching" in cmd
    # one KV pool for the 4 slots, each capped at max_model_len (a stream per slot splits decode batches)
    assert _after(cmd, "-c") == str(512 * 4) and "--kv-unified" in cmd and "--no-kv-unified" not in cmd
    assert _after(cmd, "--kv-unified-per-slot") == "512"
    assert _after(cmd, "--threads") == "3" and _after(cmd, "--threads-batch") == "3"
    assert "--metrics" in cmd
    assert "-ngl" not in cmd  # a CPU build warns about any -ngl
    assert "--no-cache-prompt" in cmd and _after(cmd, "--cache-ram") == "0"
    assert "-ctk" not in cmd and "--spec-type" not in cmd and "-md" not in cmd


def test_the_key_travels_in_the_environment_never_on_the_command_line(model_path: Path) -> None:
    """llama-server reads --api-key from LLAMA_API_KEY (the vendored common/arg.cpp's set_env)."""
    launcher = LlamaServerLauncher(cuda=False)
    keyed = _spec(model_path, api_key="sk-planted-llama")
    assert not any("sk-planted-llama" in arg for arg in launcher.command(keyed))
    assert launcher.environment(keyed) == {"LLAMA_API_KEY": "sk-planted-llama"}
    assert launcher.environment(_spec(model_path)) == {}


def test_context_defaults_to_the_models_training_context_per_slot(model_path: Path) -> None:
    assert context_length(model_path) == 8192
    assert read_metadata(model_path)["general.architecture"] == "llama"
    cmd = LlamaServerLauncher(cuda=False).command(_spec(model_path, max_batch=2))
    assert _after(cmd, "-c") == str(8192 * 2)


def test_default_threads_leave_a_core_free(model_path: Path) -> None:
    cmd = LlamaServerLauncher(cuda=False).command(_spec(model_path))
    assert _after(cmd, "--threads") == str(config.default_threads())
    assert 1 <= config.default_threads() < max(2, len(__import__("os").sched_getaffinity(0)))


@pytest.mark.parametrize(("kv", "ggml"), [("q8", "q8_0"), ("q4", "q4_0")])
def test_quantized_kv_turns_on_flash_attention(model_path: Path, kv: str, ggml: str) -> None:
    cmd = LlamaServerLauncher(cuda=False).command(_spec(model_path, kv_cache_dtype=kv))
    assert (_after(cmd, "-ctk"), _after(cmd, "-ctv"), _after(cmd, "-fa")) == (ggml, ggml, "on")


def test_prefix_caching(model_path: Path) -> None:
    cmd = LlamaServerLauncher(cuda=False).command(_spec(model_path, prefix_caching=True))
    assert "--cache-prompt" in cmd and "--no-cache-prompt" not in cmd and _after(cmd, "--cache-ram") != "0"


def test_ngram_speculation_is_prompt_lookup(model_path: Path) -> None:
    spec = _spec(model_path, speculative="ngram", num_speculative_tokens=6)
    cmd = LlamaServerLauncher(cuda=False).command(spec)
    assert _after(cmd, "--spec-type") == "ngram-simple"
    assert _after(cmd, "--spec-ngram-simple-size-m") == "6"
    default = LlamaServerLauncher(cuda=False).command(_spec(model_path, speculative="ngram"))
    assert _after(default, "--spec-ngram-simple-size-m") == "4"


def test_draft_model(model_path: Path, tmp_path: Path) -> None:
    draft = tmp_path / "draft.gguf"
    spec = _spec(model_path, draft=draft, speculative="draft:tiny", num_speculative_tokens=5, threads=1)
    cmd = LlamaServerLauncher(cuda=False).command(spec)
    assert _after(cmd, "-md") == str(draft) and _after(cmd, "--spec-draft-n-max") == "5"
    assert _after(cmd, "--spec-type") == "draft-simple" and _after(cmd, "--spec-draft-threads") == "1"
    assert "--spec-draft-ngl" not in cmd
    with pytest.raises(UnsupportedOptionError, match="must resolve to a GGUF path"):
        LlamaServerLauncher(cuda=False).command(_spec(model_path, speculative="draft:tiny"))


def test_cuda_build_offloads_every_layer(model_path: Path) -> None:
    launcher = LlamaServerLauncher(cuda=True)
    cmd = launcher.command(_spec(model_path))
    assert cmd[0].endswith("llama.cpp-0.3.36-cuda-dl1/llama-server") and _after(cmd, "-ngl") == "999"
    draft = launcher.command(_spec(model_path, draft=model_path, speculative="draft:x"))
    assert _after(draft, "--spec-draft-ngl") == "999"
    on_cpu = launcher.command(_spec(model_path, device="cpu"))
    assert on_cpu[0].endswith("llama.cpp-0.3.36-cpu-dl1/llama-server") and "-ngl" not in on_cpu
    with pytest.raises(UnsupportedOptionError, match="device='cuda'"):
        LlamaServerLauncher(cuda=False).command(_spec(model_path, device="cuda"))


# A non-default value for every option: each must change the command line or be refused (nothing ignored).
NON_DEFAULTS: dict[str, Any] = {
    "kv_cache_dtype": "q8", "speculative": "draft:tiny", "num_speculative_tokens": 7, "prefix_caching": True,
    "max_batch": 3, "max_model_len": 256, "dtype": "bfloat16", "quantization": "gptq", "device": "cpu",
    "threads": 5, "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "data_parallel_size": 2,
    "kv_cache_memory_bytes": 1 << 20, "api_server_count": 2, "batch_invariant": True,
}


@pytest.mark.parametrize("field", sorted(EngineOptions.model_fields))
def test_no_option_is_silently_ignored(model_path: Path, tmp_path: Path, field: str) -> None:
    assert field in NON_DEFAULTS, f"EngineOptions.{field} is new: map it in the llama.cpp launcher or refuse"
    launcher = LlamaServerLauncher(cuda=True)
    base = {"speculative": "ngram"} if field == "num_speculative_tokens" else {}
    draft = tmp_path / "d.gguf"
    baseline = launcher.command(_spec(model_path, draft=draft, **base))
    try:
        changed = launcher.command(_spec(model_path, draft=draft, **{**base, field: NON_DEFAULTS[field]}))
    except UnsupportedOptionError:
        return
    assert changed != baseline
