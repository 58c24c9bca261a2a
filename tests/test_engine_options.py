"""The shared option vocabulary: KV-cache dtypes (q6, k<bits>v<bits>), the draft length, and how every engine
accepts or refuses the new values (light configs only: nothing is loaded)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from backends import registry
from backends.base import DEFAULT_NUM_SPECULATIVE_TOKENS, EngineOptions, kv_cache_bits
from backends.errors import UnsupportedOptionError
from bench.cli import build_app

# A format each engine loads, so that only the option under test can be refused.
FORMATS = {"transformers": "hf", "llamacpp": "gguf", "vllm": "hf", "exllamav2": "exl2", "exllamav3": "exl3"}
# The new KV-cache values, and the engines that take each one.
NEW_KV_TAKERS = {"q6": {"exllamav2", "exllamav3"}, "k8v4": {"exllamav3"}, "k4v8": {"exllamav3"},
                 "k5v5": {"exllamav3"}}


@pytest.mark.parametrize(("given", "stored"), [
    ("auto", "auto"), ("fp8", "fp8"), ("q8", "q8"), ("q6", "q6"), ("q4", "q4"), ("Q6", "q6"), ("k8v4", "k8v4"),
    ("K8V4", "k8v4"), ("k2v8", "k2v8"), ("k8v8", "q8"), ("k6v6", "q6"), ("k4v4", "q4"), ("k5v5", "k5v5"),
])
def test_kv_cache_dtype_vocabulary(given: str, stored: str) -> None:
    assert EngineOptions(kv_cache_dtype=given).kv_cache_dtype == stored


@pytest.mark.parametrize("bad", ["int3", "q5", "q16", "k8", "v4", "k9v4", "k8v1", "k1v8", "k10v4", "k8v4x", ""])
def test_malformed_kv_cache_dtype_is_refused_with_the_vocabulary(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        EngineOptions(kv_cache_dtype=bad)
    message = str(info.value)
    assert "kv_cache_dtype must be auto, fp8, q8, q6, q4 or k<bits>v<bits>" in message
    assert "from 2 to 8, e.g. k8v4" in message and repr(bad) in message


def test_kv_cache_bits() -> None:
    assert [kv_cache_bits(d) for d in ("auto", "fp8", "q8", "q6", "q4", "k8v4", "k3v7")] == [
        None, None, (8, 8), (6, 6), (4, 4), (8, 4), (3, 7)]


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("kv", sorted(NEW_KV_TAKERS))
def test_new_kv_values_accepted_or_refused_by_each_engine(name: str, kv: str) -> None:
    options = EngineOptions(max_batch=1, device="cpu" if name == "vllm" else "auto", kv_cache_dtype=kv)
    if name in NEW_KV_TAKERS[kv]:
        registry.validate(name, options, FORMATS[name])
        return
    with pytest.raises(UnsupportedOptionError) as info:
        registry.validate(name, options, FORMATS[name])
    assert info.value.option == "kv_cache_dtype"
    assert str(info.value).startswith(f"backend {name!r} does not support kv_cache_dtype={kv!r}; supported: ")


def test_capability_matrix_names_the_new_values() -> None:
    assert "q6" in registry.capabilities("exllamav2").kv_cache_dtypes
    assert {"q6", "k<bits>v<bits>"} <= set(registry.capabilities("exllamav3").kv_cache_dtypes)
    for name in ("transformers", "llamacpp", "vllm"):
        caps = registry.capabilities(name)
        assert not caps.accepts_kv_cache_dtype("q6") and not caps.accepts_kv_cache_dtype("k8v4")


def test_draft_length_defaults_only_with_speculation() -> None:
    assert EngineOptions().num_speculative_tokens is None
    assert EngineOptions(speculative="ngram").speculative_tokens == DEFAULT_NUM_SPECULATIVE_TOKENS == 4
    assert EngineOptions(speculative="ngram", num_speculative_tokens=7).speculative_tokens == 7
    restored = EngineOptions.model_validate_json(EngineOptions(speculative="ngram").model_dump_json())
    assert restored.num_speculative_tokens is None  # "not given" survives bench run's JSON hand-over


def test_draft_length_without_speculation_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"num_speculative_tokens=3 does nothing with speculative=none"):
        EngineOptions(num_speculative_tokens=3)
    with pytest.raises(ValidationError, match="does nothing with speculative=none"):
        EngineOptions(speculative="none", num_speculative_tokens=4)  # the default value, given, is still an error
    with pytest.raises(ValidationError, match="less than or equal to 16"):
        EngineOptions(speculative="ngram", num_speculative_tokens=17)


@pytest.mark.parametrize("backend", ["transformers", "llamacpp", "vllm"])
def test_cli_refuses_a_draft_length_without_a_method(backend: str) -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--backend", backend, "--num-speculative-tokens", "3"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "num_speculative_tokens=3 does nothing with speculative=none" in result.output


def test_cli_refuses_q6_where_the_engine_lacks_it() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--backend", "llamacpp", "--kv-cache-dtype", "q6"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "backend 'llamacpp' does not support kv_cache_dtype='q6'" in result.output


@pytest.mark.parametrize("backend", ["transformers", "llamacpp", "exllamav2", "exllamav3"])
def test_engines_with_one_frontend_refuse_api_server_count(backend: str) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        registry.validate(backend, EngineOptions(device="cuda", api_server_count=2), FORMATS[backend])
    assert info.value.option == "api_server_count"
    expected = f"backend {backend!r} does not support api_server_count=2; supported: 1 (one HTTP frontend"
    assert expected in str(info.value)


# What each engine without batch-invariant kernels says when asked for them (its own reason, not the generic one).
NOT_BATCH_INVARIANT = {"transformers": "no batch-invariant kernels: the padded batch", "llamacpp": "llama.cpp has no "
                       "batch-invariant kernels", "exllamav2": "ExLlama has no batch-invariant kernels",
                       "exllamav3": "ExLlama has no batch-invariant kernels"}


@pytest.mark.parametrize("backend", sorted(NOT_BATCH_INVARIANT))
def test_engines_without_batch_invariant_kernels_refuse_batch_invariant(backend: str) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        registry.validate(backend, EngineOptions(device="cuda", batch_invariant=True), FORMATS[backend])
    assert info.value.option == "batch_invariant"
    message = str(info.value)
    assert message.startswith(f"backend {backend!r} does not support batch_invariant=True; supported: False (")
    assert NOT_BATCH_INVARIANT[backend] in message
    assert "serve one request at a time (eval concurrency 1) for repeatable replies" in message
    assert not registry.capabilities(backend).batch_invariant


def test_serve_cli_has_a_batch_invariant_flag_and_llamacpp_refuses_it() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--backend", "llamacpp", "--batch-invariant"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "backend 'llamacpp' does not support batch_invariant=True" in result.output


@pytest.mark.parametrize("backend", ["transformers", "llamacpp"])
def test_cuda_is_refused_where_cuda_sees_no_gpu(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU matrix's cells are skipped with the reason on a CPU machine, not tried (a CUDA build, a failed load)."""
    import backends.checks

    monkeypatch.setattr(backends.checks, "cuda_missing_reason", lambda: "needs CUDA: no NVIDIA GPU or driver")
    with pytest.raises(UnsupportedOptionError) as info:
        registry.validate(backend, EngineOptions(device="cuda"), FORMATS[backend])
    assert str(info.value) == (f"backend {backend!r} does not support device='cuda'; supported: cpu on this machine "
                               "(needs CUDA: no NVIDIA GPU or driver)")
    registry.validate(backend, EngineOptions(device="cpu"), FORMATS[backend])
    monkeypatch.setattr(backends.checks, "cuda_missing_reason", lambda: None)  # a GPU machine
    registry.validate(backend, EngineOptions(device="cuda"), FORMATS[backend])


def test_serve_cli_refuses_api_server_count_for_llamacpp() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--backend", "llamacpp", "--api-server-count", "2"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "backend 'llamacpp' does not support api_server_count=2" in result.output
