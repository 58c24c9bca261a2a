"""Contracts shared by every engine: options, requests, chunks and the engine protocols."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from backends.errors import InvalidRequestError

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
FinishReason = Literal["stop", "length", "abort"]

# The named KV-cache dtypes: the model's dtype, fp8, and integer caches of 8, 6 or 4 bits for keys and values.
KV_CACHE_DTYPES = ("auto", "fp8", "q8", "q6", "q4")
# Asymmetric integer caches are written k<bits>v<bits> (k8v4: 8-bit keys, 4-bit values); an engine that takes
# any such pair lists this token in ``Capabilities.kv_cache_dtypes``.
KV_BITS_PAIR = "k<bits>v<bits>"
KV_BITS_MIN, KV_BITS_MAX = 2, 8
_KV_PAIR = re.compile(r"^k(\d)v(\d)$")
_QUANTIZED_KV = MappingProxyType({"q8": (8, 8), "q6": (6, 6), "q4": (4, 4)})
# Draft tokens per speculative step when speculation is on and num_speculative_tokens is not given.
DEFAULT_NUM_SPECULATIVE_TOKENS = 4

_SPECULATIVE = re.compile(r"^(none|ngram|draft:.+|eagle:.+)$")


def kv_cache_bits(dtype: str) -> tuple[int, int] | None:
    """(key bits, value bits) of an integer KV cache (``q6`` -> (6, 6), ``k8v4`` -> (8, 4)); None for auto, fp8."""
    if dtype in _QUANTIZED_KV:
        return _QUANTIZED_KV[dtype]
    pair = _KV_PAIR.match(dtype)
    return (int(pair[1]), int(pair[2])) if pair else None


def _check_kv_cache_dtype(value: str) -> str:
    """A KV-cache dtype of the vocabulary, lower-cased; a symmetric pair becomes its name (k8v8 -> q8)."""
    dtype = value.lower()
    if dtype in KV_CACHE_DTYPES:
        return dtype
    bits = kv_cache_bits(dtype)
    if bits is None or not all(KV_BITS_MIN <= b <= KV_BITS_MAX for b in bits):
        raise ValueError(f"kv_cache_dtype must be {', '.join(KV_CACHE_DTYPES)} or {KV_BITS_PAIR} (key and value "
                         f"bits from {KV_BITS_MIN} to {KV_BITS_MAX}, e.g. k8v4); got {value!r}")
    return next((name for name, pair in _QUANTIZED_KV.items() if pair == bits), dtype)


KVCacheDtype = Annotated[str, AfterValidator(_check_kv_cache_dtype)]


class EngineOptions(BaseModel):
    """One vocabulary of serving options, shared by every engine.

    An engine that cannot honour a value must refuse it with
    :class:`backends.errors.UnsupportedOptionError`; nothing is silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_cache_dtype: KVCacheDtype = Field(
        default="auto", description="KV-cache dtype: auto, fp8, q8, q6, q4 or k<bits>v<bits> (key/value bits apart, "
        "e.g. k8v4).")
    speculative: str = Field(default="none", description="Speculative decoding: none, ngram, draft:<model>, "
                             "eagle:<path>.")
    num_speculative_tokens: int | None = Field(
        default=None, ge=1, le=16, description=f"Tokens proposed per speculative step (default "
        f"{DEFAULT_NUM_SPECULATIVE_TOKENS}); needs --speculative.")
    prefix_caching: bool = Field(default=False, description="Reuse the KV cache of a shared prompt prefix.")
    max_batch: int = Field(default=8, ge=1, description="Sequences decoded together.")
    max_model_len: int | None = Field(default=None, ge=16, description="Context window to serve.")
    dtype: Dtype = Field(default="auto", description="Weights and activations dtype.")
    quantization: str | None = Field(default=None, description="Quantization method passed to the engine.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where the engine runs.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for the engine.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per model replica (vLLM).")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="Pipeline stages (vLLM).")
    data_parallel_size: int = Field(default=1, ge=1, description="Model replicas (vLLM).")
    api_server_count: int = Field(default=1, ge=1, description="HTTP frontend processes in front of the engine "
                                  "(vLLM on GPU): more than 1 tells a frontend limit from an engine limit.")
    batch_invariant: bool = Field(
        default=False, description="Outputs independent of the batch: vLLM's VLLM_BATCH_INVARIANT, with Triton "
        "attention on GPU (FlashAttention 3 is not invariant on Hopper); for repeatable quality evals; slower. "
        "NVIDIA compute capability 8.0+; other engines refuse it (serve them at eval concurrency 1).")
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1,
                                              description="Bytes reserved for the KV cache (vLLM).")

    @field_validator("speculative")
    @classmethod
    def _check_speculative(cls, value: str) -> str:
        if not _SPECULATIVE.match(value):
            raise ValueError("speculative must be one of none, ngram, draft:<model>, eagle:<path>")
        return value

    @model_validator(mode="after")
    def _speculative_tokens_need_speculation(self) -> EngineOptions:
        if self.num_speculative_tokens is not None and self.speculative == "none":
            raise ValueError(f"num_speculative_tokens={self.num_speculative_tokens} does nothing with "
                             "speculative=none; choose a method (ngram, draft:<model>, eagle:<path>) or drop it")
        return self

    @property
    def speculative_tokens(self) -> int:
        """Draft tokens per speculative step: ``num_speculative_tokens``, else the default of 4."""
        return self.num_speculative_tokens or DEFAULT_NUM_SPECULATIVE_TOKENS

    @property
    def speculative_method(self) -> str:
        """The method part of ``speculative``: none, ngram, draft or eagle."""
        return self.speculative.split(":", 1)[0]

    @property
    def speculative_target(self) -> str | None:
        """The draft model name or EAGLE path, if any."""
        parts = self.speculative.split(":", 1)
        return parts[1] if len(parts) == 2 else None


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; ``bench backends`` prints these as a matrix."""

    formats: tuple[str, ...]
    kv_cache_dtypes: tuple[str, ...] = ("auto",)
    speculative: tuple[str, ...] = ("none",)
    prefix_caching: bool = False
    batching: Literal["continuous", "static", "none"] = "continuous"
    devices: tuple[str, ...] = ("cpu",)
    parallelism: tuple[str, ...] = ()
    # The engine can put several HTTP frontend processes in front of one engine (``api_server_count``).
    api_servers: bool = False
    # The engine has batch-invariant kernels: a reply does not depend on the rest of its batch (``batch_invariant``).
    batch_invariant: bool = False
    notes: str = ""
    # Logprobs of the prompt's own tokens (``echo=true`` with ``logprobs`` on ``/v1/completions``):
    # loglikelihood evals (``bench eval --mode loglikelihood``, lm-eval) need them.
    prompt_logprobs: bool = True

    def accepts_kv_cache_dtype(self, dtype: str) -> bool:
        """Whether ``dtype`` is listed, or is a k<bits>v<bits> pair and :data:`KV_BITS_PAIR` is listed."""
        return dtype in self.kv_cache_dtypes or (KV_BITS_PAIR in self.kv_cache_dtypes and bool(_KV_PAIR.match(dtype)))


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one token plus the top alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenRequest:
    """One generation request, already tokenized."""

    request_id: str
    prompt_ids: Sequence[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0


def check_prompt_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Refuse a prompt no engine can run: no tokens, or an id outside ``0..vocab_size-1``.

    Raises :class:`~backends.errors.InvalidRequestError` (the server answers 400).
    """
    if not ids:
        raise InvalidRequestError("the prompt is empty: it must hold at least one token")
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise InvalidRequestError(f"token id {bad} is outside the vocabulary (0 to {vocab_size - 1})")


@dataclass(frozen=True)
class GenChunk:
    """A piece of a generation stream.

    ``text`` is the new detokenized text for ``token_ids``; the chunk that ends the stream carries
    ``finish_reason``. ``prompt_logprobs`` is set on the first chunk when it was requested (the first
    prompt token has no logprob and is given ``None``). ``started_t`` is set on the first chunk by an engine
    that knows when its scheduler started the request (``time.perf_counter``, the server's clock): the
    server's queue time ends there.
    """

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    num_prompt_tokens: int = 0
    started_t: float | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's scheduler, for ``/metrics``."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = 0.0  # None: the engine has no fixed KV capacity to be a share of
    kv_capacity_tokens: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """An in-process engine served by :func:`servers.app.create_app`."""

    name: str
    model_name: str
    max_model_len: int
    capabilities: Capabilities

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must lie in ``0..vocab_size-1`` (known once the engine has started)."""

    async def start(self) -> None:
        """Load weights and start the scheduler."""

    async def stop(self) -> None:
        """Finish or abort running requests and free resources."""

    def generate(self, request: GenRequest) -> AsyncIterator[GenChunk]:
        """Stream chunks for one request; closing the iterator aborts the request."""

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""

    def token_text(self, token_id: int) -> str:
        """The text of one token, as OpenAI's ``logprobs.tokens`` shows it."""

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Prompt ids for a chat conversation, with the generation prompt appended."""

    def stats(self) -> EngineStats:
        """Scheduler counters for ``/metrics``."""


@dataclass(frozen=True)
class ServerSpec:
    """What a launcher needs to start a server for one model."""

    backend: str
    model_name: str
    model_path: Path
    options: EngineOptions
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)  # never in a printed spec or an error message
    log_path: Path | None = None
    tokenizer_path: Path | None = None
    draft_path: Path | None = None
    model_format: str = "hf"
    trust_remote_code: bool = False  # the checkpoint's own Python may run (its entry and the user both said so)


@runtime_checkable
class Launcher(Protocol):
    """A native server (vLLM, llama-server) started as a subprocess."""

    name: str
    capabilities: Capabilities

    def command(self, spec: ServerSpec) -> list[str]:
        """The command line that starts the server; pure, so it can be tested."""

    def environment(self, spec: ServerSpec) -> dict[str, str]:
        """Extra environment variables for the server process."""

    def prepare(self, spec: ServerSpec) -> None:
        """Build or install what the server needs (idempotent; may take minutes the first time)."""
