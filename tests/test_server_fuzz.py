"""Fuzz the real server from its own OpenAPI document (schemathesis): no 5xx, errors in OpenAI's shape, and a
normal request still answers afterwards.

The server is the Transformers engine over the bundled model's HF checkpoint on 127.0.0.1, started for this
module with a 64-token context so that no generated request can run long: ``MAX_EXAMPLES`` cases of valid and as
many of invalid input take under two minutes on two CPU cores (each request has a 60 s timeout). A run of 300 + 300
cases (about 4 minutes) answered 200 or 400/404 to every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from backends.base import EngineOptions
from backends.checkpoints import Registry
from servers.launch import ServerHandle
from tests.conftest import DEFAULT_MODEL
from tests.helpers import serve

HF_MODEL = "smollm2-135m-instruct-hf"
MAX_EXAMPLES = 100
CALL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def fuzz_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server with a 64-token window (every generation is short) and the default error handling."""
    from backends.prepare import prepare

    prepare(registry, DEFAULT_MODEL, only={HF_MODEL})
    yield from serve(registry, "transformers", HF_MODEL, EngineOptions(max_batch=4, max_model_len=64),
                     tmp_path_factory.mktemp("fuzz"), max_queue=4)


def _check(case: Any) -> None:
    """One generated request: never a 5xx, only documented statuses, errors in OpenAI's shape."""
    response = case.call(timeout=CALL_TIMEOUT_S)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    case.validate_response(response, checks=[status_code_conformance])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and "type" in error, response.text[:500]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_input_makes_the_server_fail(fuzz_server: ServerHandle, mode: GenerationMode) -> None:
    # schemathesis' own pytest plugin does not run under pytest 9, so hypothesis drives its strategy here.
    api = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")

    def served(case: Any) -> Any:
        # With a random model name every request would stop at the 404; the served one reaches the engine.
        if isinstance(case.body, dict):
            case.body["model"] = fuzz_server.model
        return case

    @given(case=api.as_strategy(generation_mode=mode).map(served))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        _check(case)

    run()


def test_the_server_still_answers_after_the_fuzzing(fuzz_server: ServerHandle) -> None:
    # Runs after the fuzz cases (file order): nothing they sent may have locked or broken the server.
    body = {"model": fuzz_server.model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    resp = httpx.post(f"{fuzz_server.base_url}/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 4
    metrics = httpx.get(f"{fuzz_server.url}/metrics", timeout=60).text
    assert f'servebench:requests_in_flight{{model_name="{fuzz_server.model}"}} 0.0' in metrics
    log = fuzz_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and len(log) < 1_000_000  # client errors are one line each, not a stack
