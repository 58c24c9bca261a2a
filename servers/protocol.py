"""OpenAI request and response shapes (the subset servebench serves)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Seeds are 64-bit signed integers, as in vLLM (torch's generators take no wider one).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Token ids the protocol takes; the engine's vocabulary bounds them further (the server checks, 400).
TOKEN_ID_MAX = 2**63 - 1


def _lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in parsed JSON holds a lone surrogate (JSON allows ``"\\ud800"``, UTF-8 does not).

    Iterative, so that deeply nested input cannot exhaust the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _Request(BaseModel):
    """A request body: no NaN or infinity in numbers, and text that is valid Unicode throughout."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if _lone_surrogate(data):
            raise ValueError("the request holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string, "
                             "which is not valid Unicode text")
        return data


class StreamOptions(BaseModel):
    """``stream_options`` of a streaming request."""

    include_usage: bool = False


class _SamplingFields(_Request):
    """Fields common to completions and chat completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM extensions that benchmark clients send to force exact output lengths.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    @property
    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple of non-empty strings."""
        if self.stop is None:
            return ()
        items = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in items if s)


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        prompts = value if isinstance(value, list) and value and isinstance(value[0], (str, list)) else [value]
        for prompt in prompts:
            if not prompt:
                raise ValueError("prompt must not be empty (nor hold an empty prompt)")
            if isinstance(prompt, list) and not all(0 <= t <= TOKEN_ID_MAX for t in prompt):
                raise ValueError("token ids must be integers from 0 to the vocabulary size - 1")
        return value


class ChatMessage(BaseModel):
    """One chat message; content parts of type text are joined."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content part type {part.get('type')!r} is not supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ErrorDetail(BaseModel):
    """The ``error`` object of an OpenAI error response."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the server answers has this shape (documented in the OpenAPI schema)."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a field out of range, a prompt the model cannot run.",
    401: "Missing or wrong API key (the server was started with --api-key).",
    404: "Unknown model.",
    413: "Request body too large.",
    429: "The server is at capacity; retry later.",
    503: "The engine died or the server is stopping; retrying will not help.",
}


def new_id(prefix: str) -> str:
    """An OpenAI-style object id."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
