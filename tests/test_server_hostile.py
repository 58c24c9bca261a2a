"""The server against hostile but fair input (issue #17, server half), over the real Transformers engine.

Every request goes to the session's real server on 127.0.0.1 (``transformers_server``: max_batch 4, max_queue 4,
so 8 requests in flight at most) through httpx or the official openai client. Every loop is bounded in count,
and every request has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from servers.launch import ServerHandle
from tests.helpers import server_metric, wait_server_idle

TIMEOUT = httpx.Timeout(120, connect=10)
# (label, JSON body fields) of completion requests the server must refuse with 400, and what the message says.
BAD_PROMPTS: list[tuple[str, Any, str]] = [
    ("negative id", [-1], "token ids must be"),
    ("id = vocab", [49152], "outside the vocabulary"),
    ("id 1e9", [10**9], "outside the vocabulary"),
    ("id 2**63", [2**63], "token ids must be"),
    ("id 2**64 in a list of lists", [[1, 2**64]], "token ids must be"),
    ("empty string", "", "must not be empty"),
    ("list of empty string", [""], "must not be empty"),
    ("empty id list", [[]], "must not be empty"),
]


def _completion(server: ServerHandle, **fields: Any) -> dict[str, Any]:
    return {"model": server.model, "max_tokens": 4, "temperature": 0, **fields}


def _post(server: ServerHandle, path: str, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.base_url}{path}", content=content, timeout=TIMEOUT,
                      headers={"content-type": "application/json"})


def _metric(server: ServerHandle, name: str) -> float:
    return server_metric(server.url, name)


def _wait_idle(server: ServerHandle, timeout_s: float = 60.0) -> None:
    wait_server_idle(server.url, timeout_s)


def _tracebacks(server: ServerHandle) -> int:
    return server.log_path.read_text(errors="replace").count("Traceback")


def _assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture
def quiet_log(transformers_server: ServerHandle) -> Iterator[None]:
    """Asserts that the test logged no traceback: client errors get one line, not a stack."""
    before = _tracebacks(transformers_server)
    yield
    assert _tracebacks(transformers_server) == before


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("label", "prompt", "says"), BAD_PROMPTS, ids=[b[0] for b in BAD_PROMPTS])
def test_a_prompt_no_model_can_run_is_400(transformers_server: ServerHandle, label: str, prompt: Any, says: str,
                                          stream: bool) -> None:
    resp = _post(transformers_server, "/completions", _completion(transformers_server, prompt=prompt, stream=stream))
    error = _assert_openai_error(resp, 400)  # before the stream starts: not 200 plus an error event
    assert error["param"] == "prompt" and says in error["message"], (label, error)


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", [2**64, -(2**64), 2**70])
def test_a_seed_past_64_bits_is_400(transformers_server: ServerHandle, seed: int, stream: bool) -> None:
    body = _completion(transformers_server, prompt="Hello", temperature=1.0, seed=seed, stream=stream)
    assert _assert_openai_error(_post(transformers_server, "/completions", body), 400)["param"] == "seed"


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_a_lone_surrogate_is_400(transformers_server: ServerHandle, path: str, stream: bool) -> None:
    text = '"Hello \\ud800 world"'  # valid JSON, not valid Unicode
    field = f'"prompt": {text}' if path == "/completions" else f'"messages": [{{"role": "user", "content": {text}}}]'
    raw = f'{{"model": "{transformers_server.model}", "max_tokens": 4, "stream": {json.dumps(stream)}, {field}}}'
    error = _assert_openai_error(_post(transformers_server, path, raw.encode()), 400)
    assert "surrogate" in error["message"]


@pytest.mark.usefixtures("quiet_log")
def test_nan_and_infinity_are_400(transformers_server: ServerHandle) -> None:
    model = json.dumps(transformers_server.model)
    for field in ('"temperature": NaN', '"top_p": Infinity', '"temperature": -Infinity'):  # Python's json takes them
        raw = f'{{"model": {model}, "prompt": "x", {field}}}'.encode()
        _assert_openai_error(_post(transformers_server, "/completions", raw), 400)


def test_a_near_zero_temperature_answers_as_greedy(transformers_server: ServerHandle) -> None:
    def ask(temperature: float) -> str:
        body = {"model": transformers_server.model, "max_tokens": 8, "temperature": temperature,
                "messages": [{"role": "user", "content": "What is 2+3?"}]}
        resp = _post(transformers_server, "/chat/completions", body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["message"]["content"])

    assert ask(1e-50) == ask(0.0)


@pytest.mark.usefixtures("quiet_log")
def test_more_prompts_than_the_server_admits_is_400_and_holds_nothing(transformers_server: ServerHandle) -> None:
    # Limit 8 (max_batch 4 + max_queue 4): 9 prompts can never be admitted, so 429 would ask for a vain retry.
    body = _completion(transformers_server, prompt=["Hi"] * 9)
    error = _assert_openai_error(_post(transformers_server, "/completions", body), 400)
    assert "at most 8" in error["message"]
    assert _metric(transformers_server, "servebench:requests_in_flight") == 0
    ok = _post(transformers_server, "/completions", _completion(transformers_server, prompt=["Hi", "Yo"]))
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


def test_a_refused_request_gives_back_every_slot_and_is_counted(transformers_server: ServerHandle) -> None:
    _wait_idle(transformers_server)
    rejected = _metric(transformers_server, "servebench:requests_rejected_total")
    long = _completion(transformers_server, prompt="Count:", max_tokens=400, ignore_eos=True, stream=True)
    with httpx.Client(base_url=transformers_server.base_url, timeout=TIMEOUT) as client:
        streams = [client.stream("POST", "/completions", json=long) for _ in range(6)]
        responses = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in responses)
            assert _metric(transformers_server, "servebench:requests_in_flight") == 6
            # Three prompts need three slots and two are free: refused whole, holding none of them.
            resp = client.post("/completions", json=_completion(transformers_server, prompt=["a", "b", "c"]))
            _assert_openai_error(resp, 429)
            assert _metric(transformers_server, "servebench:requests_in_flight") == 6
            assert _metric(transformers_server, "servebench:requests_rejected_total") == rejected + 1
        finally:
            for s in streams:
                s.__exit__(None, None, None)  # disconnects: the server cancels the generations
    _wait_idle(transformers_server)
    ok = _post(transformers_server, "/completions", _completion(transformers_server, prompt=["a", "b", "c"]))
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 3


def test_a_body_over_the_limit_is_413(transformers_server: ServerHandle) -> None:
    huge = json.dumps(_completion(transformers_server, prompt="x" * (9 * 1024 * 1024))).encode()
    error = _assert_openai_error(_post(transformers_server, "/completions", huge), 413)
    assert "larger than this server accepts" in error["message"] and error["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server counts as the bytes arrive
        yield b'{"model": "m", "prompt": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    resp = httpx.post(f"{transformers_server.base_url}/completions", content=chunked(), timeout=TIMEOUT,
                      headers={"content-type": "application/json"})
    assert _assert_openai_error(resp, 413)["code"] == "request_too_large"


def test_openapi_lists_the_real_error_responses(transformers_server: ServerHandle) -> None:
    schema = httpx.get(f"{transformers_server.url}/openapi.json", timeout=TIMEOUT).json()
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "413", "429", "503"}, path
        assert responses["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "422" not in json.dumps(schema["paths"])


def test_health_answers_json(transformers_server: ServerHandle) -> None:
    resp = httpx.get(f"{transformers_server.url}/health", timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_echo_logprobs_of_a_long_prompt_do_not_block_a_short_chat(transformers_server: ServerHandle) -> None:
    ids = [(i * 7919) % 40000 + 100 for i in range(3000)]

    async def main() -> tuple[float, float, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=transformers_server.base_url, timeout=TIMEOUT) as client:
            scoring = asyncio.ensure_future(client.post("/completions", json=_completion(
                transformers_server, prompt=ids, max_tokens=0, echo=True, logprobs=1)))
            await asyncio.sleep(0.5)
            chat = await client.post("/chat/completions", json={
                "model": transformers_server.model, "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 200, chat.text
            chat_done = time.monotonic()
            resp = await scoring
            assert resp.status_code == 200, resp.text[:300]
            return chat_done, time.monotonic(), resp.json()

    chat_done, scoring_done, body = asyncio.run(main())
    assert chat_done < scoring_done
    scores = body["choices"][0]["logprobs"]["token_logprobs"]
    assert len(scores) == 3000 and scores[0] is None and all(s <= 0 for s in scores[1:])


async def _good_stream(client: AsyncOpenAI, model: str, prompt: str, tokens: int) -> tuple[int, str | None]:
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    reason, usage = None, 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            reason = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return usage, reason


async def _bad_requests(server: ServerHandle, rounds: int) -> list[int]:
    """Every malformed request above, ``rounds`` times, two at a time; the status codes."""
    bodies = [_completion(server, prompt=p, stream=i % 2 == 0) for i, (_, p, _) in enumerate(BAD_PROMPTS)]
    bodies += [_completion(server, prompt="x", seed=2**64), _completion(server, prompt=["x"] * 9)]
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
        for _ in range(rounds):
            for i in range(0, len(bodies), 2):
                replies = await asyncio.gather(*(client.post("/completions", json=b) for b in bodies[i:i + 2]))
                statuses += [r.status_code for r in replies]
                await asyncio.sleep(0.05)
    return statuses


def test_bad_requests_arriving_mid_stream_leave_good_streams_whole(transformers_server: ServerHandle) -> None:
    tokens = 64

    async def main() -> tuple[list[tuple[int, str | None]], list[int]]:
        client = AsyncOpenAI(base_url=transformers_server.base_url, api_key="unused", max_retries=0, timeout=180)
        good = [asyncio.ensure_future(_good_stream(client, transformers_server.model, p, tokens))
                for p in ("Tell me about cats.", "Tell me about dogs.", "Tell me about birds.")]
        await asyncio.sleep(0.3)
        statuses = await _bad_requests(transformers_server, rounds=3)
        return list(await asyncio.gather(*good)), statuses

    results, statuses = asyncio.run(main())
    assert results == [(tokens, "length")] * 3  # every good stream ended with its full output
    assert statuses and set(statuses) == {400}
    _wait_idle(transformers_server)
