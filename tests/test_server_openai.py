"""The OpenAI endpoint over the Transformers engine, driven by the official openai client."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from servers.launch import ServerHandle
from tests.helpers import server_metric, wait_server_idle


@pytest.fixture(scope="module")
def client(transformers_server: ServerHandle) -> OpenAI:
    return OpenAI(base_url=transformers_server.base_url, api_key="unused", max_retries=0, timeout=120)


def ask(client: OpenAI, model: str, **kw: object) -> object:
    return client.chat.completions.create(  # type: ignore[call-overload]  # kw: any of its options
        model=model, messages=[{"role": "user", "content": "What is 2+3?"}], temperature=0, **kw
    )


def test_models_lists_the_served_model(client: OpenAI, transformers_server: ServerHandle) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [transformers_server.model]


def test_chat_non_streaming_answers(client: OpenAI, transformers_server: ServerHandle) -> None:
    reply = ask(client, transformers_server.model, max_tokens=24)
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert "5" in choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 24  # type: ignore[attr-defined]


def test_chat_streaming_with_usage_chunk(client: OpenAI, transformers_server: ServerHandle) -> None:
    stream = ask(client, transformers_server.model, max_tokens=24, stream=True,
                 stream_options={"include_usage": True})
    chunks = list(stream)  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "5" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in {"stop", "length"}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == sum(1 for c in chunks if c.choices and c.choices[0].delta.content) or \
        last.usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_non_streaming_and_streaming_agree(client: OpenAI, transformers_server: ServerHandle) -> None:
    kw = {"model": transformers_server.model, "prompt": "The capital of France is", "max_tokens": 8,
          "temperature": 0}
    whole = client.completions.create(**kw)  # type: ignore[call-overload]
    pieces = client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)  # type: ignore[call-overload]
    chunks = list(pieces)
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert whole.choices[0].text == streamed
    assert "Paris" in streamed
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 8


def test_echo_with_logprobs_scores_the_prompt(client: OpenAI, transformers_server: ServerHandle) -> None:
    prompt = "The capital of France is Paris"
    out = client.completions.create(model=transformers_server.model, prompt=prompt, max_tokens=0, echo=True,
                                    logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert lp is not None and out.usage is not None
    tokens, scores, offsets, tops = lp.tokens, lp.token_logprobs, lp.text_offset, lp.top_logprobs
    assert tokens is not None and scores is not None and offsets is not None and tops is not None
    assert out.choices[0].text == prompt
    assert "".join(tokens) == prompt
    assert scores[0] is None and all(v <= 0 for v in scores[1:])
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert tops[0] is None and all(len(t) == 1 for t in tops[1:])
    # " Paris" is the model's top choice after "The capital of France is".
    last = tops[-1]
    assert max(last, key=lambda tok: last[tok]) == " Paris"
    assert out.usage.prompt_tokens == len(tokens) and out.usage.completion_tokens == 0


def test_generated_logprobs_match_greedy_choice(client: OpenAI, transformers_server: ServerHandle) -> None:
    reply = ask(client, transformers_server.model, max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content  # type: ignore[attr-defined]
    assert len(content) >= 1
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(max(t.logprob for t in item.top_logprobs), abs=1e-4)


def test_stop_strings_cut_the_text(client: OpenAI, transformers_server: ServerHandle) -> None:
    out = client.completions.create(model=transformers_server.model, prompt="1, 2, 3, 4,", max_tokens=20,
                                    temperature=0, stop=[" 7"])
    assert out.choices[0].finish_reason == "stop"
    assert " 7" not in out.choices[0].text and "6" in out.choices[0].text


def test_seed_makes_sampling_reproducible(client: OpenAI, transformers_server: ServerHandle) -> None:
    kw = {"model": transformers_server.model, "prompt": "Once upon a time", "max_tokens": 12,
          "temperature": 1.0, "top_p": 0.9, "seed": 1234}
    first = client.completions.create(**kw).choices[0].text  # type: ignore[call-overload]
    second = client.completions.create(**kw).choices[0].text  # type: ignore[call-overload]
    assert first == second


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "no-such-model", max_tokens=4)
    assert err.value.code == "model_not_found"
    assert "no-such-model" in err.value.message


def server_message(err: openai.APIError) -> str:
    """The ``error.message`` the server sent (the client's ``message`` prefixes the status)."""
    assert isinstance(err.body, dict)
    return str(err.body["message"])


def overflow_message(field: str) -> str:
    """OpenAI's wording of a context overflow, naming the request field that holds the input."""
    return (
        rf"This model's maximum context length is \d+ tokens\. However, you requested \d+ tokens "
        rf"\(\d+ in the {field}, 4 in the completion\)\. Please reduce the length of the {field} or completion\."
    )


def test_prompt_over_context_is_400(client: OpenAI, transformers_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=transformers_server.model, prompt="hello " * 9000, max_tokens=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    assert re.fullmatch(overflow_message("prompt"), server_message(err.value)), err.value.message


def test_messages_over_context_is_400(client: OpenAI, transformers_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=transformers_server.model, max_tokens=4,
                                       messages=[{"role": "user", "content": "hello " * 9000}])
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert re.fullmatch(overflow_message("messages"), server_message(err.value)), err.value.message


def test_malformed_json_is_400(transformers_server: ServerHandle) -> None:
    resp = httpx.post(f"{transformers_server.base_url}/chat/completions", content=b'{"model": broken',
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "could not parse the JSON body" in resp.json()["error"]["message"]


def test_missing_field_is_400_naming_it(transformers_server: ServerHandle) -> None:
    resp = httpx.post(f"{transformers_server.base_url}/completions", json={"model": transformers_server.model})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "prompt"


def test_unsupported_sampling_option_is_refused(client: OpenAI, transformers_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError, match="not supported"):
        ask(client, transformers_server.model, max_tokens=4, n=2)


def _gauge(server: ServerHandle, name: str) -> float:
    return server_metric(server.url, name)


def _wait_idle(server: ServerHandle, timeout_s: float = 30.0) -> None:
    wait_server_idle(server.url, timeout_s)


def test_disconnect_mid_stream_frees_the_slot(transformers_server: ServerHandle) -> None:
    body = {"model": transformers_server.model, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{transformers_server.base_url}/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert _gauge(transformers_server, "vllm:num_requests_running") == 1
    _wait_idle(transformers_server)
    before = _gauge_total(transformers_server, "vllm:generation_tokens_total")
    time.sleep(0.5)
    assert _gauge_total(transformers_server, "vllm:generation_tokens_total") == before  # generation stopped


def _gauge_total(server: ServerHandle, name: str) -> float:
    return _gauge(server, name)


def test_disconnect_of_a_non_streaming_request_cancels_it(transformers_server: ServerHandle) -> None:
    body = {"model": transformers_server.model, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{transformers_server.base_url}/completions", json=body, timeout=httpx.Timeout(60, read=3))
    _wait_idle(transformers_server)
    generated = _gauge_total(transformers_server, "vllm:generation_tokens_total")
    time.sleep(0.5)
    assert _gauge_total(transformers_server, "vllm:generation_tokens_total") == generated


async def _timed_stream(client: AsyncOpenAI, model: str, prompt: str) -> tuple[float, float, float]:
    start = time.perf_counter()
    first = 0.0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and not first:
            first = time.perf_counter()
    return start, first, time.perf_counter()


def test_four_concurrent_requests_overlap(transformers_server: ServerHandle) -> None:
    async def main() -> list[tuple[float, float, float]]:
        client = AsyncOpenAI(base_url=transformers_server.base_url, api_key="unused", max_retries=0)
        prompts = ["Tell me about cats.", "Tell me about dogs.", "Tell me about birds.", "Tell me about fish."]
        return list(await asyncio.gather(*(_timed_stream(client, transformers_server.model, p) for p in prompts)))

    spans = asyncio.run(main())
    # Overlap, not queueing: every request streamed its first token before any request finished.
    assert max(first for _, first, _ in spans) < min(end for _, _, end in spans)


def test_full_queue_answers_429(transformers_server: ServerHandle) -> None:
    # The fixture admits max_batch (4) + max_queue (4) = 8 requests at once.
    async def one(client: AsyncOpenAI) -> str:
        try:
            await client.completions.create(model=transformers_server.model, prompt="Hello", max_tokens=48,
                                            extra_body={"ignore_eos": True})
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
            return "429"

    async def main() -> list[str]:
        client = AsyncOpenAI(base_url=transformers_server.base_url, api_key="unused", max_retries=0, timeout=120)
        return list(await asyncio.gather(*(one(client) for _ in range(12))))

    results = asyncio.run(main())
    assert results.count("429") >= 1
    assert results.count("ok") >= 8
    _wait_idle(transformers_server)


def test_health_and_metrics_names(transformers_server: ServerHandle) -> None:
    assert httpx.get(f"{transformers_server.url}/health").status_code == 200
    text = httpx.get(f"{transformers_server.url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"):
        assert name in text


def test_wrong_api_key_is_401(secured_server: ServerHandle) -> None:
    bad = OpenAI(base_url=secured_server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.code == "invalid_api_key"
    assert server_message(err.value) == "Incorrect API key provided."  # no part of the key echoed
    good = OpenAI(base_url=secured_server.base_url, api_key="sk-test-123", max_retries=0)
    assert [m.id for m in good.models.list()] == [secured_server.model]
    reply = ask(good, secured_server.model, max_tokens=16)
    assert "5" in reply.choices[0].message.content  # type: ignore[attr-defined]
