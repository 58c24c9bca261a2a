"""ExLlama engines without a GPU: registry entries, capabilities, availability and option refusals."""

from __future__ import annotations

import pytest

from backends import registry
from backends.base import EngineOptions
from backends.errors import UnsupportedOptionError
from backends.exllamav2 import config as v2
from backends.exllamav2.jobloop import cache_tokens
from backends.exllamav3 import config as v3
from backends.gpu import cuda_missing_reason

OK = EngineOptions(max_batch=1)


def test_registered_as_engines_with_their_extras() -> None:
    for name, cfg in (("exllamav2", v2), ("exllamav3", v3)):
        entry = registry.entry(name)
        assert (entry.kind, entry.extra, entry.config) == ("engine", name, cfg.__name__)
        assert registry.capabilities(name).devices == ("cuda",)


@pytest.mark.skipif(cuda_missing_reason() is None, reason="this machine has an NVIDIA GPU")
def test_availability_says_cuda_is_needed() -> None:
    for name in ("exllamav2", "exllamav3"):
        reason = registry.availability(name)
        assert reason is not None and reason.startswith("needs CUDA")


def test_formats() -> None:
    for fmt in ("exl2", "gptq", "hf"):
        v2.validate(OK, fmt, flash_attn=False)
    v3.validate(OK, "exl3")
    for cfg, fmt in ((v2, "exl3"), (v2, "gguf"), (v3, "exl2"), (v3, "gguf")):
        with pytest.raises(UnsupportedOptionError, match="format"):
            cfg.validate(OK, fmt)


@pytest.mark.parametrize("kv", ["auto", "q8", "q4"])
def test_quantized_caches_accepted(kv: str) -> None:
    options = EngineOptions(max_batch=1, kv_cache_dtype=kv)  # type: ignore[arg-type]
    v2.validate(options, "exl2", flash_attn=False)
    v3.validate(options, "exl3")


def test_fp8_cache_refused_with_reason() -> None:
    options = EngineOptions(max_batch=1, kv_cache_dtype="fp8")
    with pytest.raises(UnsupportedOptionError, match="dynamic generator"):
        v2.validate(options, "exl2", flash_attn=True)
    with pytest.raises(UnsupportedOptionError, match="kv_cache_dtype"):
        v3.validate(options, "exl3")


def test_batching_needs_flash_attn_in_v2_only() -> None:
    many = EngineOptions(max_batch=8)
    with pytest.raises(UnsupportedOptionError, match="flash-attn"):
        v2.validate(many, "exl2", flash_attn=False)
    v2.validate(many, "exl2", flash_attn=True)
    v3.validate(many, "exl3")
    assert v2.CAPABILITIES.batching == ("continuous" if v2.HAS_FLASH_ATTN else "none")


@pytest.mark.parametrize("spec", ["ngram", "draft:smollm2-135m-instruct"])
def test_speculative_methods_accepted(spec: str) -> None:
    options = EngineOptions(max_batch=1, speculative=spec)
    v2.validate(options, "exl2", flash_attn=False)
    v3.validate(options, "exl3")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("speculative", "eagle:/x", "speculative"),
    ("device", "cpu", "device"),
    ("dtype", "bfloat16", "dtype"),
    ("tensor_parallel_size", 2, "parallelism"),
    ("kv_cache_memory_bytes", 1 << 30, "kv_cache_memory_bytes"),
    ("threads", 4, "threads"),
    ("quantization", "awq", "quantization"),
])
def test_unsupported_options_refused(field: str, value: object, match: str) -> None:
    options = EngineOptions(max_batch=1, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(UnsupportedOptionError, match=match):
        v2.validate(options, "exl2", flash_attn=True)
    with pytest.raises(UnsupportedOptionError, match=match):
        v3.validate(options, "exl3")


def test_cache_is_whole_pages() -> None:
    assert cache_tokens(2048, 1) == 2048
    assert cache_tokens(1000, 3) == 3072
    assert cache_tokens(1, 1) == 256
