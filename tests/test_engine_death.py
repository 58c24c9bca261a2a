"""A dead in-process engine: running requests get a clear error, ``/health`` fails, new requests get 503.

The server is the real app (``servers.app.create_app``) under uvicorn on 127.0.0.1 over the real Transformers
engine and the bundled model, run in this process so that the crash can start where a real one does: inside
the engine's generation loop, the model's forward raises the error CUDA raises after an illegal memory access
(``torch.AcceleratorError``), which leaves a device unusable. Everything is asserted through the official
openai client (and ``bench eval``), and every wait is bounded.

The model is the bundled one in the HF form ``bench models prepare`` derives from its GGUF: it loads in about
a second, where dequantizing the GGUF takes ten or more, and each test needs an engine of its own to kill.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import torch
from typer.testing import CliRunner

from backends.base import EngineOptions
from backends.checkpoints import Registry
from backends.net import free_port
from backends.transformers.engine import TransformersEngine
from bench.cli import build_app
from bench.evals.runner import SAMPLES_FILE, SUMMARY_FILE, dead_engine_reason, is_transient
from servers.app import create_app
from servers.launch import build_spec
from servers.settings import ServerSettings

MODEL = "smollm2-135m-instruct-hf"
CRASH = "CUDA error: an illegal memory access was encountered"
LONG = {"ignore_eos": True}  # with max_tokens, keeps a request running until the crash


class ForwardFault:
    """Replaces a model's forward with one that, once armed, raises :data:`CRASH` (a ``torch.AcceleratorError``)
    after ``after_calls`` more calls, and on every call from then on, as a broken device does."""

    def __init__(self, model: Any) -> None:
        self._forward = model.forward
        self._left: int | None = None  # None: disarmed
        self._lock = threading.Lock()
        model.forward = self._call

    def arm(self, after_calls: int = 0) -> None:
        """Crash from the ``after_calls + 1``-th forward call on."""
        with self._lock:
            self._left = after_calls

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            crash = self._left == 0
            if self._left:
                self._left -= 1
        if crash:
            raise torch.AcceleratorError(CRASH)
        return self._forward(*args, **kwargs)


@dataclass
class LiveServer:
    """The app serving in a thread of this process, with its engine and the fault wired into its model."""

    url: str
    engine: TransformersEngine
    fault: ForwardFault

    def client(self) -> openai.OpenAI:
        """An openai client that never retries and gives up on a read after 20 s."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=20, max_retries=0)


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def live_server(registry: Registry) -> Iterator[LiveServer]:
    """``create_app`` over a fresh Transformers engine under uvicorn on 127.0.0.1; stopped on exit."""
    import uvicorn

    options = EngineOptions(max_batch=4, max_model_len=1024, threads=1)
    spec = build_spec(registry, "transformers", MODEL, options, port=free_port())
    engine = TransformersEngine(spec.model_name, spec.model_path, spec.model_format, spec.options,
                                tokenizer_path=spec.tokenizer_path)
    settings = ServerSettings(port=spec.port, served_model_name=MODEL, max_queue=4,
                              max_concurrency=options.max_batch, drain_timeout_s=2)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, settings), host="127.0.0.1", port=spec.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{spec.port}"
    try:
        _wait_until(lambda: _healthy(url) or not thread.is_alive(), 180, "the server to become healthy")
        assert thread.is_alive(), "the server thread ended during start-up"
        yield LiveServer(url=url, engine=engine, fault=ForwardFault(engine.model))
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def hf_registry(registry: Registry) -> Registry:
    """The registry with the HF checkpoint of the bundled model made (cached across sessions)."""
    from backends.prepare import prepare

    prepare(registry, "smollm2-135m-instruct", only={MODEL})
    return registry


def _error(exc: openai.APIError) -> dict[str, Any]:
    assert isinstance(exc.body, dict), exc.body
    return exc.body


def _assert_says_died(exc: openai.APIError) -> None:
    body = _error(exc)
    assert body["code"] == "engine_dead", body
    assert "transformers engine died" in body["message"] and "AcceleratorError" in body["message"], body
    assert CRASH in body["message"], body


def _read_stream(stream: Iterator[Any]) -> int:
    return sum(1 for _ in stream)


def test_running_requests_fail_health_fails_and_new_requests_get_503(hf_registry: Registry) -> None:
    with live_server(hf_registry) as server, ThreadPoolExecutor(2) as pool:
        client = server.client()
        chat = [{"role": "user", "content": "Count from one to a thousand."}]
        streamed = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=900, stream=True,  # type: ignore[arg-type]
                                                  extra_body=LONG)
        chunks = iter(streamed)
        next(chunks)  # the stream has started: its role chunk came back
        plain = pool.submit(client.completions.create, model=MODEL, prompt="1, 2, 3,", max_tokens=900,
                            extra_body=LONG)
        _wait_until(lambda: server.engine.stats().running == 2, 60, "both requests to run in the engine")
        assert server.engine.stats().running == 2

        server.fault.arm()
        crashed = time.monotonic()
        rest = pool.submit(_read_stream, chunks)
        with pytest.raises(openai.APIError) as in_stream:
            rest.result(timeout=30)
        assert type(in_stream.value) is openai.APIError  # the server's error event, not a timeout
        _assert_says_died(in_stream.value)
        with pytest.raises(openai.InternalServerError) as in_flight:
            plain.result(timeout=30)
        assert in_flight.value.status_code == 503
        _assert_says_died(in_flight.value)
        assert time.monotonic() - crashed < 15  # well inside the client's 20 s read timeout: no hang

        health = httpx.get(f"{server.url}/health", timeout=5)
        assert health.status_code == 503
        assert "transformers engine died" in health.json()["error"]["message"]

        for call in (
            lambda: client.chat.completions.create(model=MODEL, messages=chat, max_tokens=4),  # type: ignore[arg-type]
            lambda: client.chat.completions.create(model=MODEL, messages=chat, max_tokens=4, stream=True),  # type: ignore[arg-type]
            lambda: client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=4),
            lambda: client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=4, stream=True),
        ):
            with pytest.raises(openai.InternalServerError) as refused:
                call()
            assert refused.value.status_code == 503  # refused before a stream starts, not 200 then an event
            _assert_says_died(refused.value)
        assert client.models.list().data[0].id == MODEL  # the server itself is still up and says why


def test_bench_eval_stops_at_a_dead_engine_and_keeps_its_samples(hf_registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--url", "", "--model", MODEL, "--task", "arc-easy", "--mode", "generate", "--limit", "20",
            "--concurrency", "1", "--max-duration-s", "60", "--out", str(out)]  # bounded even if the stop failed
    with live_server(hf_registry) as server:
        args[2] = server.url
        # ARC generation takes at most 8 forward calls per sample (prefill + 7 decode steps), at least 1:
        # the crash comes after two samples at least and before the twentieth.
        server.fault.arm(after_calls=17)
        started = time.monotonic()
        result = CliRunner().invoke(build_app(), args)
        elapsed = time.monotonic() - started
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "engine is dead" in output and "transformers engine died" in output, output
    assert "stopped after" in output and SAMPLES_FILE in output, output
    # Retrying the 503 (4 times, 7.5 s of backoff per sample) would take far longer than this.
    assert elapsed < 30, f"took {elapsed:.0f}s"
    samples = [json.loads(line) for line in (out / SAMPLES_FILE).read_text().splitlines()]
    assert 2 <= len(samples) < 20, len(samples)
    assert all(s["error"] is None and s["output"] is not None for s in samples), samples
    assert f"stopped after {len(samples)} of 20 samples" in output
    assert not (out / SUMMARY_FILE).exists()


def _status_error(status: int, body: dict[str, Any]) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/completions")  # the openai client's own httpx
    response = httpx2.Response(status, request=request, json={"error": body})
    return openai.APIStatusError(str(body.get("message")), response=response, body=body)


def test_only_a_dead_engine_stops_the_eval_and_transient_errors_are_retried() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/completions")
    dead = {"message": "the transformers engine died (AcceleratorError: x); restart it", "code": "engine_dead"}
    assert dead_engine_reason(_status_error(503, dead)) is not None
    assert not is_transient(_status_error(503, dead))
    in_stream = openai.APIError(dead["message"], request, body=dead)  # an error event inside a stream
    assert dead_engine_reason(in_stream) is not None
    vllm_like = {"message": "EngineCore died unexpectedly: the engine is dead", "code": None}
    assert dead_engine_reason(_status_error(503, vllm_like)) is not None  # said in words, no code
    loading = {"message": "Loading model", "type": "unavailable_error", "code": 503}  # llama-server starting
    assert dead_engine_reason(_status_error(503, loading)) is None and is_transient(_status_error(503, loading))
    full = {"message": "The server is at capacity (8 requests in flight). Retry later.", "code": "rate_limit_exceeded"}
    assert dead_engine_reason(_status_error(429, full)) is None and is_transient(_status_error(429, full))
    assert dead_engine_reason(_status_error(500, dead)) is None  # only a 503 (or a stream's event) says so
    assert is_transient(openai.APIConnectionError(request=request))  # e.g. connection reset
    assert not is_transient(openai.APITimeoutError(request=request))  # it already had its whole budget
    assert not is_transient(_status_error(400, {"message": "bad", "code": None}))
