"""The serving loop shared by the ExLlama engines (V2's dynamic generator and V3's generator).

Both libraries expose the same shape: create a job, ``enqueue`` it, call ``iterate()`` repeatedly and read
result dicts (``identifier``, ``stage``, ``eos``, ``eos_reason``, ``token_ids``, optional ``logits``).
One worker thread owns the generator and the GPU. Requests arrive on a thread-safe inbox; every loop turn
admits new jobs and runs one ``iterate()`` for all running jobs, so the batch is continuous wherever the
generator allows it. Text is detokenized by :class:`backends.textstream.TextStream` with our own stop
strings (the job is cancelled when one is hit), so every in-process engine ends text the same way.

A subclass supplies the library calls: load, make and cancel a job, iterate, prompt logits.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from backends.base import (
    EngineOptions,
    EngineStats,
    FinishReason,
    GenChunk,
    GenRequest,
    TokenLogprob,
)
from backends.inprocess import Pending, WorkerEngine, is_fatal, top_logprobs

log = logging.getLogger("servebench.exllama")

PAGE = 256  # both libraries allocate the KV cache in pages of 256 tokens

_REASONS: dict[str, FinishReason] = {"stop_token": "stop", "stop_string": "stop", "max_new_tokens": "length"}


@dataclass(eq=False)
class Live(Pending):
    """A request with its generator job (the worker thread owns it, except ``aborted``)."""

    job: Any = None
    prompt_lps: tuple[TokenLogprob | None, ...] | None = None
    n_out: int = 0
    capped: bool = False  # max_new_tokens was cut to fit max_model_len
    done: bool = False


def cache_tokens(max_len: int, sequences: int) -> int:
    """KV-cache size in tokens for ``sequences`` full-length sequences, rounded up to whole pages."""
    tokens = max_len * sequences
    return -(-tokens // PAGE) * PAGE


def token_logprobs(logits: torch.Tensor, ids: Sequence[int], k: int) -> tuple[TokenLogprob, ...]:
    """Log-probabilities of the chosen ``ids`` under raw ``logits`` rows (one row per id)."""
    rows = torch.log_softmax(logits.float(), dim=-1)
    return tuple(TokenLogprob(t, float(rows[i, t]), top_logprobs(rows[i], k)) for i, t in enumerate(ids))


def eos_ids(model_dir: Path, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the tokenizer and the checkpoint's generation config."""
    ids: set[Any] = {tokenizer.eos_token_id}
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((model_dir / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        ids.update(value if isinstance(value, list) else [value])
    return frozenset(int(i) for i in ids if i is not None)


class JobLoopEngine(WorkerEngine[Live]):
    """An :class:`backends.base.Engine` over an ExLlama-style job generator (see module docstring)."""

    def __init__(self, model_name: str, path: Path, fmt: str, options: EngineOptions,
                 tokenizer_path: Path | None = None, draft_path: Path | None = None) -> None:
        super().__init__(model_name, path, fmt, options, tokenizer_path, draft_path)
        self.kv_capacity = 0
        self._eos: frozenset[int] = frozenset()
        self._vocab = 0
        self._spec = {"accepted": 0.0, "rejected": 0.0}
        self._gen: Any = None  # the library's generator, set by _load_backend

    # ---- what each library supplies -------------------------------------------------------------
    @abstractmethod
    def _load_backend(self) -> None:
        """Load model, cache and generator; set ``max_model_len``, ``kv_capacity`` and ``_vocab``."""

    @abstractmethod
    def _make_job(self, live: Live, max_new: int, stop_ids: list[int], want_logits: bool) -> Any:
        """Create and enqueue a job for ``live`` (``identifier=live``)."""

    def _cancel(self, job: Any) -> None:
        """Remove a job from the generator (both libraries: ``generator.cancel``)."""
        if job is not None:
            self._gen.cancel(job)

    def _iterate(self) -> list[dict[str, Any]]:
        """One generator step (both libraries: ``generator.iterate``)."""
        results: list[dict[str, Any]] = self._gen.iterate()
        return results

    @abstractmethod
    def _prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Raw logits for every prompt position, shape (len(ids), vocab)."""

    @abstractmethod
    def _pending_jobs(self) -> int:
        """Jobs queued in the generator but not yet started."""

    @abstractmethod
    def _after_finish(self) -> None:
        """Run after a job ends (both engines drop reusable pages there when prefix caching is off)."""

    # ---- lifecycle -------------------------------------------------------------------------------
    def _load(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_path or self.path))
        self._eos = eos_ids(self.path, self.tokenizer)
        self._load_backend()

    def with_batching(self, batching: str) -> None:
        """Record the batching the loaded library actually gives (e.g. none without flash-attn)."""
        self.capabilities = replace(self.capabilities, batching=batching)  # type: ignore[arg-type]

    def stats(self) -> EngineStats:
        """Scheduler counters; KV usage is estimated from the live sequences' lengths. Raises if dead."""
        self.check_alive()
        active = list(self._active)
        used = sum(len(s.req.prompt_ids) + s.n_out for s in active)
        extra = {f"spec_{k}_tokens": v for k, v in self._spec.items()}
        return EngineStats(running=len(active), waiting=self._inbox.qsize() + self._pending_jobs(),
                           kv_cache_usage=min(1.0, used / self.kv_capacity) if self.kv_capacity else 0.0,
                           kv_capacity_tokens=self.kv_capacity, extra=extra)

    # ---- worker thread ---------------------------------------------------------------------------
    def _pending(self, request: GenRequest, fields: dict[str, Any]) -> Live:
        return Live(**fields)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for live in self._take(block=not self._active):
                try:
                    self._submit(live)
                except Exception as exc:
                    log.exception("request %s refused", live.req.request_id)
                    live.send(exc)
            self._reap_aborted()
            if self._active:
                self._step_guarded()

    def _submit(self, live: Live) -> None:
        req = live.req
        room = self.max_model_len - len(req.prompt_ids)
        if room < 0 or (room == 0 and req.max_tokens > 0):
            raise ValueError(f"prompt of {len(req.prompt_ids)} tokens leaves no room in max_model_len "
                             f"{self.max_model_len}")
        if req.prompt_logprobs is not None:
            live.prompt_lps = self._prompt_logprobs(req.prompt_ids, req.prompt_logprobs)
        if req.max_tokens == 0:
            live.send(GenChunk((), "", None, "length", live.prompt_lps, len(req.prompt_ids)))
            return
        live.capped = req.max_tokens > room
        stops = sorted(set(req.stop_token_ids) | (set() if req.ignore_eos else set(self._eos)))
        live.job = self._make_job(live, min(req.max_tokens, room), stops, req.logprobs is not None)
        self._active.append(live)

    def _prompt_logprobs(self, ids: Sequence[int], k: int) -> tuple[TokenLogprob | None, ...]:
        logits = self._prompt_logits(ids)[:, : self._vocab]
        return (None, *token_logprobs(logits[:-1], list(ids[1:]), k))

    def _reap_aborted(self) -> None:
        for live in [s for s in self._active if s.aborted]:
            self._cancel(live.job)
            self._finish(live)

    def _step_guarded(self) -> None:
        """One generator step; on error fail the running requests and keep serving new ones.

        A fatal error (:func:`~backends.inprocess.is_fatal`: the device is gone) is re-raised with the running
        requests left in place: the worker dies and ends them with the reason, and the server answers 503.
        """
        try:
            results = self._iterate()
        except Exception as exc:
            if is_fatal(exc):
                raise
            log.exception("generator step failed")
            for live in list(self._active):
                self._cancel_quietly(live)
                live.send(exc)
                self._finish(live)
            return
        for result in results:
            owner = result.get("identifier")
            if isinstance(owner, Live) and not owner.done and result.get("stage") == "streaming":
                self._emit(owner, result)

    def _emit(self, live: Live, result: dict[str, Any]) -> None:
        ids_t = result.get("token_ids")
        ids = [int(t) for t in ids_t.flatten().tolist()] if ids_t is not None else []
        reason: FinishReason | None = None
        if result.get("eos"):
            reason = _REASONS.get(str(result.get("eos_reason")), "stop")
            self._count_speculation(result)
        text = live.text.push(ids)
        if live.text.stopped and reason is None:
            reason = "stop"
            self._cancel(live.job)
        if reason is not None:
            text += live.text.finish()
        lps = None
        if live.req.logprobs is not None and ids:
            logits = result["logits"].reshape(-1, result["logits"].shape[-1])[:, : self._vocab]
            lps = token_logprobs(logits[-len(ids):], ids, live.req.logprobs)
        live.n_out += len(ids)
        live.send(GenChunk(tuple(ids), text, lps, reason, live.prompt_lps, len(live.req.prompt_ids)))
        live.prompt_lps = None
        if reason is not None:
            self._finish(live)

    def _count_speculation(self, result: dict[str, Any]) -> None:
        self._spec["accepted"] += float(result.get("accepted_draft_tokens", 0))
        self._spec["rejected"] += float(result.get("rejected_draft_tokens", 0))

    def _finish(self, live: Live) -> None:
        live.done = True
        if live in self._active:
            self._active.remove(live)
        self._after_finish()

    def _cancel_quietly(self, live: Live) -> None:
        try:
            self._cancel(live.job)
        except Exception:
            log.exception("cancel failed")


@dataclass(frozen=True)
class DraftSpec:
    """Speculative decoding as the generators take it: a draft model directory, or n-gram, or none."""

    draft_path: Path | None = None
    ngram: bool = False
    num_tokens: int = 0


def draft_spec(options: EngineOptions, draft_path: Path | None) -> DraftSpec:
    """Resolve ``options.speculative`` to a :class:`DraftSpec` (the draft path from models.yaml if not given)."""
    method = options.speculative_method
    if method == "ngram":
        return DraftSpec(ngram=True, num_tokens=options.speculative_tokens)
    if method == "draft":
        if draft_path is None:
            from backends.checkpoints import load_registry

            draft_path = load_registry().path_of(str(options.speculative_target))
        return DraftSpec(draft_path=draft_path, num_tokens=options.speculative_tokens)
    return DraftSpec()
