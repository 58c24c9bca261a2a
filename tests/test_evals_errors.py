"""``bench eval`` against an endpoint that refuses ``echo``: it stops at the first refusal, with the reason.

The endpoint here answers exactly as llama-server does (vendored llama.cpp,
``tools/server/server-common.cpp``: ``throw std::runtime_error("Only no echo is supported")``, sent as an
OpenAI-shaped HTTP 400 by ``server-http.cpp``). Starting llama-server itself needs a cmake build and a
module-scoped fixture, too costly for this error path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from bench.cli import build_app
from bench.evals.config import EvalConfig
from bench.evals.runner import EndpointUnsupportedError, run_eval, unsupported_reason
from bench.evals.tasks.base import Choices, Prompt

NO_ECHO = {"error": {"code": 400, "message": "Only no echo is supported", "type": "invalid_request_error"}}


@dataclass
class NoEchoServer:
    """A loopback endpoint that refuses every completion the way llama-server refuses ``echo``."""

    url: str
    bodies: list[dict[str, object]] = field(default_factory=list)


async def _serve(server: NoEchoServer, ready: threading.Event, stop: asyncio.Event, port: list[int]) -> None:
    async def completions(request: web.Request) -> web.Response:
        server.bodies.append(await request.json())
        return web.json_response(NO_ECHO, status=400)

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port.append(runner.addresses[0][1])
    ready.set()
    await stop.wait()
    await runner.cleanup()


@pytest.fixture
def no_echo_server() -> Iterator[NoEchoServer]:
    server = NoEchoServer(url="")
    loop = asyncio.new_event_loop()
    ready, stop, port = threading.Event(), asyncio.Event(), list[int]()
    thread = threading.Thread(target=loop.run_until_complete, args=(_serve(server, ready, stop, port),))
    thread.start()
    assert ready.wait(10)
    server.url = f"http://127.0.0.1:{port[0]}"
    yield server
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _config(url: str, limit: int) -> EvalConfig:
    return EvalConfig(url=url, model="m", task="arc-easy", mode="loglikelihood", limit=limit, concurrency=1)


def test_loglikelihood_eval_stops_at_the_first_echo_refusal(no_echo_server: NoEchoServer, tmp_path: Path) -> None:
    with pytest.raises(EndpointUnsupportedError) as err:
        run_eval(_config(no_echo_server.url, limit=6), tmp_path / "out")
    message = str(err.value)
    assert "Only no echo is supported" in message and "--mode generate" in message
    assert no_echo_server.bodies and no_echo_server.bodies[0]["echo"] is True
    assert len(no_echo_server.bodies) < 6  # it did not go on to fail every sample
    assert (tmp_path / "out" / "samples.jsonl").read_text() == ""
    assert not (tmp_path / "out" / "eval_summary.json").exists()  # no summary that looks like a result


def test_bench_eval_cli_says_why_and_exits_2(no_echo_server: NoEchoServer, tmp_path: Path) -> None:
    args = ["eval", "--url", no_echo_server.url, "--model", "m", "--task", "arc-easy", "--mode", "loglikelihood",
            "--limit", "2", "--concurrency", "1", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert "echo" in result.output and "--mode generate" in result.output


class _StatusError(Exception):
    """The two attributes of ``openai.APIStatusError`` the runner reads (the real one is tested above)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Error code: {status_code} - {message}")
        self.status_code = status_code
        self.body = {"code": status_code, "message": message, "type": "invalid_request_error"}


def _bad_request(message: str) -> _StatusError:
    return _StatusError(400, message)


def test_only_an_echo_refusal_of_a_loglikelihood_request_stops_the_run() -> None:
    choices = Choices(context="Q?\nAnswer:", continuations=(" a", " b"))
    prompt = Prompt(query="Q?", max_tokens=4)
    reason = unsupported_reason(_bad_request("Only no echo is supported"), choices)
    assert reason is not None and "Only no echo is supported" in reason
    assert unsupported_reason(_bad_request("Only no echo is supported"), prompt) is None  # no echo sent
    assert unsupported_reason(_bad_request("prompt is too long"), choices) is None  # one sample's problem
    assert unsupported_reason(RuntimeError("echo"), choices) is None  # not an HTTP 400
    assert unsupported_reason(_StatusError(404, "echo"), choices) is None
