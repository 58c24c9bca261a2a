"""The Transformers engine: one worker thread runs a continuous-batching loop over the model.

Requests arrive on a thread-safe inbox. Each loop iteration admits waiting requests (prefilled together
as one left-padded batch and merged into the running batch), then runs one decode step for every
running sequence. Finished or aborted rows leave the batch at once, so a new request never waits for
another to finish.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from backends.base import (
    Capabilities,
    EngineOptions,
    EngineStats,
    FinishReason,
    GenChunk,
    GenRequest,
    TokenLogprob,
)
from backends.inprocess import Pending, WorkerEngine, is_fatal, top_logprobs
from backends.transformers import batch as kv
from backends.transformers.config import CAPABILITIES, NAME, load_time_quantization

log = logging.getLogger("servebench.transformers")


@dataclass(eq=False)
class _Seq(Pending):
    """A request in the running batch, with its sampler and the tokens generated so far."""

    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)


class TransformersEngine(WorkerEngine[_Seq]):
    """Continuous-batching engine over a transformers causal LM."""

    name = NAME
    capabilities: Capabilities = CAPABILITIES

    def __init__(self, model_name: str, path: Path, fmt: str, options: EngineOptions,
                 tokenizer_path: Path | None = None, draft_path: Path | None = None) -> None:
        if draft_path is not None:  # config.validate refuses speculative decoding before we get here
            raise ValueError("the transformers engine does not do speculative decoding")
        super().__init__(model_name, path, fmt, options, tokenizer_path)
        self._batch: kv.KVBatch | None = None
        self.model: Any = None

    def _device(self) -> torch.device:
        wanted = self.options.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(wanted)

    def _dtype(self, device: torch.device) -> torch.dtype:
        names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if self.options.dtype != "auto":
            return names[self.options.dtype]
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        device = self._device()
        if device.type == "cpu":
            torch.set_num_threads(self.options.threads or max(1, (os.cpu_count() or 2) - 1))
        kwargs: dict[str, object] = {"dtype": self._dtype(device)}
        folder, tok_folder, tok_kwargs = str(self.path), str(self.tokenizer_path or self.path), {}
        if self.format == "gguf":
            folder = str(self.path.parent)
            kwargs.update(gguf_file=self.path.name, quantization_config=GgufConfig(dequantize=True))
            if self.tokenizer_path is None:
                tok_folder, tok_kwargs = folder, {"gguf_file": self.path.name}
        quantization = load_time_quantization(self.format, kwargs["dtype"])
        if quantization is not None:  # bnb/torchao quantize while loading, straight onto the device
            kwargs.update(quantization_config=quantization, device_map=str(device))
        self.tokenizer = AutoTokenizer.from_pretrained(tok_folder, **tok_kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        self.model = (model if quantization is not None else model.to(device)).eval()
        limit = int(getattr(self.model.config, "max_position_embeddings", 2048))
        if self.options.max_model_len and self.options.max_model_len > limit:
            raise ValueError(f"max_model_len {self.options.max_model_len} exceeds the model's {limit}")
        self.max_model_len = self.options.max_model_len or limit
        self._eos = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else next(iter(self._eos), 0))

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(int(i) for i in ids if i is not None)

    def stats(self) -> EngineStats:
        """Scheduler counters; raises if the worker died."""
        self.check_alive()
        batch = self._batch
        used = batch.tokens() if batch is not None else 0
        capacity = self.options.max_batch * self.max_model_len
        return EngineStats(running=len(self._active), waiting=self._inbox.qsize(),
                           kv_cache_usage=used / capacity if capacity else 0.0, kv_capacity_tokens=capacity)

    # ---- worker thread ---------------------------------------------------------------------------
    def _pending(self, request: GenRequest, fields: dict[str, Any]) -> _Seq:
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.model.device)
            generator.manual_seed(request.seed if request.seed is not None else int.from_bytes(os.urandom(4)))
        return _Seq(**fields, generator=generator)

    def _reset(self) -> None:
        self._batch = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            fresh = self._take(block=not self._active, room=self.options.max_batch - len(self._active))
            if fresh:
                self._guarded(partial(self._admit, fresh), fresh)
            if self._active:
                self._guarded(self._step)

    def _guarded(self, step: Callable[[], None], fresh: Sequence[_Seq] = ()) -> None:
        """Run a scheduler step; on error fail the affected requests and keep serving the rest.

        A fatal error (:func:`~backends.inprocess.is_fatal`) is re-raised instead, with the affected
        requests left in ``_active``: the worker dies and ends them with the reason.
        """
        try:
            step()
        except Exception as exc:
            affected = list(dict.fromkeys([*self._active, *fresh]))
            self._active, self._batch = [], None
            if is_fatal(exc):
                self._active = affected
                raise
            log.exception("batch step failed")
            for seq in affected:
                seq.send(exc)

    def _admit(self, fresh: list[_Seq]) -> None:
        full = any(s.req.prompt_logprobs is not None for s in fresh)
        batch, logits = kv.prefill(self.model, [s.req.prompt_ids for s in fresh], self._pad, full)
        keep: list[int] = []
        for row, seq in enumerate(fresh):
            prompt_lps = self._prompt_logprobs(seq, logits[row]) if seq.req.prompt_logprobs is not None else None
            if seq.req.max_tokens == 0:
                seq.send(GenChunk((), "", None, "length", prompt_lps, len(seq.req.prompt_ids)))
                continue
            if self._emit(seq, logits[row, -1], prompt_lps):
                keep.append(row)
        admitted = kv.select(batch, keep)
        if admitted is not None:
            self._batch = kv.merge(self._batch, admitted)
            self._active.extend(fresh[i] for i in keep)

    def _prompt_logprobs(self, seq: _Seq, logits: torch.Tensor) -> tuple[TokenLogprob | None, ...]:
        ids = list(seq.req.prompt_ids)
        k = seq.req.prompt_logprobs or 0
        rows = torch.log_softmax(logits[-len(ids):-1], dim=-1)
        out: list[TokenLogprob | None] = [None]
        for pos, tid in enumerate(ids[1:]):
            out.append(TokenLogprob(tid, float(rows[pos, tid]), top_logprobs(rows[pos], k)))
        return tuple(out)

    def _step(self) -> None:
        assert self._batch is not None
        logits = kv.decode(self.model, self._batch, [s.output[-1] for s in self._active])
        keep = [row for row, seq in enumerate(self._active) if self._emit(seq, logits[row], None)]
        if len(keep) != len(self._active):
            self._batch = kv.select(self._batch, keep)
            self._active = [self._active[i] for i in keep]

    def _emit(self, seq: _Seq, logits: torch.Tensor, prompt_lps: tuple[TokenLogprob | None, ...] | None,
              ) -> bool:
        """Sample one token for ``seq`` and send it; True while the sequence goes on."""
        if seq.aborted:
            return False
        req = seq.req
        if req.ignore_eos or len(seq.output) < req.min_tokens:
            logits[list(self._eos)] = float("-inf")
        token = kv.sample(logits, req.temperature, req.top_p, seq.generator)
        seq.output.append(token)
        lps = None
        if req.logprobs is not None:
            row = torch.log_softmax(logits, dim=-1)
            lps = (TokenLogprob(token, float(row[token]), top_logprobs(row, req.logprobs)),)
        reason = self._finish_reason(seq, token)
        text = seq.text.push([] if token in self._eos and reason == "stop" else [token])
        if seq.text.stopped:
            reason = "stop"
        if reason is not None:
            text += seq.text.finish()
        seq.send(GenChunk((token,), text, lps, reason, prompt_lps, len(req.prompt_ids)))
        return reason is None

    def _finish_reason(self, seq: _Seq, token: int) -> FinishReason | None:
        req = seq.req
        if token in self._eos and not req.ignore_eos:
            return "stop"
        if token in req.stop_token_ids:
            return "stop"
        if len(seq.output) >= req.max_tokens or len(req.prompt_ids) + len(seq.output) >= self.max_model_len:
            return "length"
        return None
