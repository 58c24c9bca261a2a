"""ExLlama engines without a GPU: registry entries, capabilities, availability and option refusals."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from backends import registry
from backends.base import EngineOptions
from backends.errors import UnsupportedOptionError
from backends.exllamav2 import config as v2
from backends.exllamav2.jobloop import cache_tokens, draft_spec
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


@pytest.mark.parametrize("kv", ["auto", "q8", "q6", "q4"])
def test_quantized_caches_accepted(kv: str) -> None:
    options = EngineOptions(max_batch=1, kv_cache_dtype=kv)
    v2.validate(options, "exl2", flash_attn=False)
    v3.validate(options, "exl3")


@pytest.mark.parametrize("kv", ["k8v4", "k4v8", "k2v2", "k8v6", "k5v5"])
def test_key_value_bits_accepted_by_v3_only(kv: str) -> None:
    options = EngineOptions(max_batch=1, kv_cache_dtype=kv)
    v3.validate(options, "exl3")
    with pytest.raises(UnsupportedOptionError, match=rf"kv_cache_dtype='{kv}'.*keys and values alike"):
        v2.validate(options, "exl2", flash_attn=True)


def test_fp8_cache_refused_with_reason() -> None:
    options = EngineOptions(max_batch=1, kv_cache_dtype="fp8")
    with pytest.raises(UnsupportedOptionError, match="dynamic generator"):
        v2.validate(options, "exl2", flash_attn=True)
    with pytest.raises(UnsupportedOptionError, match=r"kv_cache_dtype='fp8'.*exllamav3 has no fp8 cache"):
        v3.validate(options, "exl3")


def test_v2_cache_classes() -> None:
    assert dict(v2.CACHE_CLASSES) == {"auto": "ExLlamaV2Cache", "q8": "ExLlamaV2Cache_Q8",
                                      "q6": "ExLlamaV2Cache_Q6", "q4": "ExLlamaV2Cache_Q4"}
    assert set(v2.CAPABILITIES.kv_cache_dtypes) == set(v2.CACHE_CLASSES)  # every accepted dtype has a class


@pytest.mark.skipif(importlib.util.find_spec("exllamav2") is None, reason="exllamav2 is not installed")
def test_v2_cache_classes_exist_in_the_installed_package() -> None:
    """Read, not imported (exllamav2 imports only with CUDA): the package exports each class we look up."""
    spec = importlib.util.find_spec("exllamav2")
    assert spec is not None and spec.origin is not None
    exported = set(re.findall(r"^from exllamav2\.cache import (\w+)$", Path(spec.origin).read_text(), re.M))
    assert set(v2.CACHE_CLASSES.values()) <= exported


@pytest.mark.parametrize(("kv", "args"), [
    ("auto", {}), ("q8", {"k_bits": 8, "v_bits": 8}), ("q6", {"k_bits": 6, "v_bits": 6}),
    ("q4", {"k_bits": 4, "v_bits": 4}), ("k8v4", {"k_bits": 8, "v_bits": 4}), ("k4v8", {"k_bits": 4, "v_bits": 8}),
    ("k8v8", {"k_bits": 8, "v_bits": 8}),
])
def test_v3_cache_layer_bits(kv: str, args: dict[str, int]) -> None:
    """{} is exllamav3's CacheLayer_fp16; otherwise CacheLayer_quant with these k_bits/v_bits."""
    assert v3.cache_layer_args(EngineOptions(kv_cache_dtype=kv).kv_cache_dtype) == args


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


def test_draft_length_reaches_the_generators(tmp_path: Path) -> None:
    assert draft_spec(EngineOptions(speculative="ngram"), None).num_tokens == 4
    assert draft_spec(EngineOptions(speculative="ngram", num_speculative_tokens=6), None).num_tokens == 6
    spec = draft_spec(EngineOptions(speculative="draft:tiny", num_speculative_tokens=3), tmp_path)
    assert (spec.draft_path, spec.num_tokens, spec.ngram) == (tmp_path, 3, False)
    assert draft_spec(EngineOptions(), None).num_tokens == 0
