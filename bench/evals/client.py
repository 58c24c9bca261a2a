"""The eval's only contact with the endpoint: the official ``openai`` async client, timed.

Works against any OpenAI-compatible server (ours, vLLM, llama-server). Each call measures its own
end-to-end latency and, when streaming, the time to the first content; retries are off so that a
failure is recorded, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.evals.tasks.base import ApiKind, Choices, Prompt, Reply

Clock = Callable[[], float]


@dataclass(frozen=True)
class CallResult:
    """The reply plus what the call cost: seconds from send and the server's token counts."""

    reply: Reply
    e2e_s: float
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class LogprobsError(ValueError):
    """The endpoint's echo/logprobs answer cannot be split into context and continuation."""


class EchoIgnoredError(LogprobsError):
    """The endpoint answered an ``echo`` request without prompt logprobs: it ignores ``echo`` altogether."""


def continuation_logprob(
    context_chars: int, text_offset: Sequence[int], logprobs: Sequence[float | None]
) -> tuple[float, int]:
    """Sum and count of the logprobs of the tokens that start at or after ``context_chars``.

    A token that straddles the boundary (context and continuation merged by the tokenizer) is counted
    with the continuation, so the whole continuation is always covered.
    """
    starts = [i for i, offset in enumerate(text_offset) if offset <= context_chars]
    if not starts:
        raise LogprobsError("no token starts inside the context")
    first = starts[-1]
    picked = logprobs[first:]
    if not picked or any(lp is None for lp in picked):
        raise LogprobsError(f"missing logprobs for continuation tokens from #{first} on (is echo honoured?)")
    return float(sum(lp for lp in picked if lp is not None)), len(picked)


class EndpointClient:
    """Sends prompts to ``base_url`` (``.../v1``) for ``model``; one instance per eval run."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None,
        timeout_s: float,
        stream: bool,
        clock: Clock = time.perf_counter,
    ) -> None:
        from openai import AsyncOpenAI

        self.model, self.stream, self.clock = model, stream, clock
        key = api_key or "EMPTY"  # the client insists on a key; servers without auth ignore it
        self._client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout_s)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def generate(self, prompt: Prompt, api: ApiKind) -> CallResult:
        """Greedy generation through ``/v1/completions`` or ``/v1/chat/completions``."""
        common: dict[str, Any] = {"model": self.model, "max_tokens": prompt.max_tokens, "temperature": 0.0}
        if prompt.stop:
            common["stop"] = list(prompt.stop)
        if self.stream:
            common.update(stream=True, stream_options={"include_usage": True})
        if api == "chat":
            return await self._chat(prompt, common)
        return await self._completion(prompt, common)

    async def _completion(self, prompt: Prompt, common: dict[str, Any]) -> CallResult:
        sent = self.clock()
        response = await self._client.completions.create(prompt=prompt.completion_text(), **common)
        if not self.stream:
            end = self.clock()
            usage = response.usage
            return CallResult(
                Reply(text=response.choices[0].text),
                end - sent,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
            )
        return await self._collect_stream(response, sent, lambda chunk: chunk.choices[0].text)

    async def _chat(self, prompt: Prompt, common: dict[str, Any]) -> CallResult:
        sent = self.clock()
        messages: Any = prompt.chat_messages()
        response = await self._client.chat.completions.create(messages=messages, **common)
        if not self.stream:
            end = self.clock()
            usage = response.usage
            return CallResult(
                Reply(text=response.choices[0].message.content or ""),
                end - sent,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
            )
        return await self._collect_stream(response, sent, lambda chunk: chunk.choices[0].delta.content)

    async def _collect_stream(
        self, response: Any, sent: float, text_of: Callable[[Any], str | None]
    ) -> CallResult:
        parts: list[str] = []
        first: float | None = None
        prompt_tokens = completion_tokens = None
        async for chunk in response:
            text = text_of(chunk) if chunk.choices else None
            if text:
                first = self.clock() if first is None else first
                parts.append(text)
            if chunk.usage:
                prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        end = self.clock()
        ttft = None if first is None else first - sent
        return CallResult(Reply(text="".join(parts)), end - sent, ttft, prompt_tokens, completion_tokens)

    async def loglikelihood(self, choices: Choices) -> CallResult:
        """Score every continuation in one ``/v1/completions`` call (echo, logprobs=1, max_tokens=0)."""
        prompts = [choices.context + continuation for continuation in choices.continuations]
        sent = self.clock()
        response = await self._client.completions.create(
            model=self.model, prompt=prompts, echo=True, logprobs=1, max_tokens=0, temperature=0.0
        )
        end = self.clock()
        by_index = sorted(response.choices, key=lambda choice: choice.index)
        if len(by_index) != len(prompts):
            raise LogprobsError(f"asked for {len(prompts)} prompts, got {len(by_index)} choices")
        sums, counts = [], []
        for choice in by_index:
            block = choice.logprobs
            if block is None or block.text_offset is None or block.token_logprobs is None:
                raise EchoIgnoredError("the endpoint returned no logprobs/text_offset for an echo request")
            total, count = continuation_logprob(len(choices.context), block.text_offset, block.token_logprobs)
            sums.append(total)
            counts.append(count)
        usage = response.usage
        reply = Reply(choice_logprobs=tuple(sums), choice_tokens=tuple(counts))
        prompt_tokens = usage.prompt_tokens if usage else None
        return CallResult(reply, end - sent, prompt_tokens=prompt_tokens, completion_tokens=0)
