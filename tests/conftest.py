"""Session-scoped real servers on 127.0.0.1 over the bundled model; each starts once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import EngineOptions
from backends.checkpoints import Registry, load_registry
from backends.net import free_port
from bench.load.tokenizer import Tokenizer, load_tokenizer
from servers.launch import ServerHandle, build_spec, running_server

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


def _serve(registry: Registry, backend: str, model: str, options: EngineOptions, log_dir: Path,
           api_key: str | None = None) -> Iterator[ServerHandle]:
    spec = build_spec(registry, backend, model, options, port=free_port(), api_key=api_key)
    with running_server(spec, registry, log_dir / f"{backend}-{spec.port}.log", max_queue=4) as handle:
        yield handle


@pytest.fixture(scope="session")
def transformers_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The Transformers engine serving the bundled model (GGUF dequantized at load)."""
    log_dir = tmp_path_factory.mktemp("servers")
    yield from _serve(registry, "transformers", DEFAULT_MODEL, EngineOptions(max_batch=4), log_dir)


@pytest.fixture(scope="session")
def secured_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The same engine behind ``--api-key``, from the HF checkpoint that ``bench models prepare`` derives."""
    log_dir = tmp_path_factory.mktemp("servers")
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL, only={"smollm2-135m-instruct-hf"})
    options = EngineOptions(max_batch=2, max_model_len=512)
    yield from _serve(registry, "transformers", "smollm2-135m-instruct-hf", options, log_dir, api_key="sk-test-123")
