"""``bench serve --max-queue`` is our server's queue bound: native servers refuse a value they cannot honour.

CPU only, and nothing is started: the refusal comes before the registry is read or an engine is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import build_app
from servers.launch import DEFAULT_MAX_QUEUE, NativeServerOptionError, check_max_queue


def _serve(*args: str) -> tuple[int, str]:
    """Exit code and output (rich's line wrapping undone) of ``bench serve ARGS``."""
    result = CliRunner().invoke(build_app(), ["serve", *args])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(("backend", "model", "why"), [
    ("vllm", "smollm2-135m-instruct-hf", "servebench does not pass a queue bound to vLLM: vLLM's own, "
                                         "--max-num-queued-reqs"),
    ("llamacpp", "smollm2-135m-instruct", "llama-server has no setting that bounds its request queue"),
])
def test_a_native_server_refuses_max_queue_and_says_why(backend: str, model: str, why: str) -> None:
    # A registry that does not exist: had the command gone past the refusal, it would fail on that instead.
    code, output = _serve("--backend", backend, "--model", model, "--max-queue", "8",
                          "--registry", "/nonexistent/models.yaml")
    assert code == 2, output
    assert f"--max-queue 8 cannot be honoured by backend '{backend}', which runs its own native server" in output
    assert why in output
    assert "in-process engines (exllamav2, exllamav3, transformers)" in output  # where --max-queue does work


def test_the_default_or_no_value_is_accepted_and_in_process_engines_take_any() -> None:
    for backend in ("vllm", "llamacpp"):
        check_max_queue(backend, None)
        check_max_queue(backend, DEFAULT_MAX_QUEUE)  # asks for nothing the server does not do already
    for backend in ("transformers", "exllamav2", "exllamav3"):
        check_max_queue(backend, 2)
    with pytest.raises(NativeServerOptionError, match="'vllm'"):
        check_max_queue("vllm", 0)


def test_start_server_refuses_max_queue_for_a_native_server_before_launching(tmp_path: Path) -> None:
    from backends.base import EngineOptions
    from backends.checkpoints import load_registry
    from servers.launch import build_spec, start_server

    registry = load_registry()
    spec = build_spec(registry, "llamacpp", "smollm2-135m-instruct", EngineOptions(), port=1)
    with pytest.raises(NativeServerOptionError, match="--max-queue 2 cannot be honoured by backend 'llamacpp'"):
        start_server(spec, registry, tmp_path / "server.log", max_queue=2)
    assert not (tmp_path / "server.log").exists()  # refused before anything started
