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
from backends.errors import UnsupportedOptionError
from backends.inprocess import Pending, WorkerEngine, is_fatal, top_logprobs
from backends.transformers import batch as kv
from backends.transformers.config import CAPABILITIES, NAME, load_time_quantization
from backends.transformers.gptq_mixed import HALF_ONLY, gptq_dynamic, load_gptq_mixed

log = logging.getLogger("servebench.transformers")


# Prompt tokens per forward when a request wants its prompt's logprobs: the logits of one chunk (chunk x vocab
# floats) are all that is held at once, and the running batch decodes a step between chunks.
PROMPT_CHUNK = 256


@dataclass(eq=False)
class _Seq(Pending):
    """A request in the running batch, with its sampler and the tokens generated so far.

    While its prompt is prefilled chunk by chunk (prompt logprobs), ``chunked`` holds its own cache,
    ``done`` the prompt tokens fed so far and ``prompt_lps`` their scores.
    """

    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)
    chunked: kv.KVBatch | None = None
    done: int = 0
    prompt_lps: list[TokenLogprob] = field(default_factory=list)


class TransformersEngine(WorkerEngine[_Seq]):
    """Continuous-batching engine over a transformers causal LM."""

    name = NAME
    capabilities: Capabilities = CAPABILITIES

    def __init__(self, model_name: str, path: Path, fmt: str, options: EngineOptions,
                 tokenizer_path: Path | None = None, draft_path: Path | None = None,
                 trust_remote_code: bool = False) -> None:
        if draft_path is not None:  # config.validate refuses speculative decoding before we get here
            raise ValueError("the transformers engine does not do speculative decoding")
        super().__init__(model_name, path, fmt, options, tokenizer_path)
        self._remote_code = trust_remote_code  # servers.launch.build_spec: the entry and the user both allowed it
        self._batch: kv.KVBatch | None = None
        self._chunking: list[_Seq] = []  # prompt-logprobs requests being prefilled, oldest first
        self._admitting: list[_Seq] = []  # requests of the prefill now running
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
        from transformers import AutoConfig, AutoTokenizer, GgufConfig

        device = self._device()
        self._set_threads(device)
        remote: dict[str, object] = {"trust_remote_code": True} if self._remote_code else {}
        kwargs: dict[str, object] = {"dtype": self._dtype(device), **remote}
        folder, tok_folder = str(self.path), str(self.tokenizer_path or self.path)
        tok_kwargs: dict[str, object] = dict(remote)
        if self.format == "gguf":
            folder = str(self.path.parent)
            kwargs.update(gguf_file=self.path.name, quantization_config=GgufConfig(dequantize=True))
            if self.tokenizer_path is None:
                tok_folder, tok_kwargs = folder, {"gguf_file": self.path.name}
        config_kwargs = {"gguf_file": self.path.name, **remote} if self.format == "gguf" else dict(remote)
        self.max_model_len = self._context_window(AutoConfig.from_pretrained(folder, **config_kwargs))
        quantization = load_time_quantization(self.format, kwargs["dtype"])
        if quantization is not None:  # bnb/torchao quantize while loading, straight onto the device
            kwargs.update(quantization_config=quantization, device_map=str(device))
        self.tokenizer = AutoTokenizer.from_pretrained(tok_folder, **tok_kwargs)
        if self.format == "gptq" and gptq_dynamic(self.path):  # transformers' GPTQ loader ignores `dynamic`
            self.model = load_gptq_mixed(self.path, self._half_dtype(kwargs["dtype"]), device,
                                         self._remote_code).eval()
        else:
            self.model = self._load_model(folder, kwargs, quantization, device)
        self._eos = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else next(iter(self._eos), 0))

    def _load_model(self, folder: str, kwargs: dict[str, Any], quantization: object | None,
                    device: torch.device) -> Any:
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if self.format == "hqq":  # transformers 5 cannot apply HqqConfig while loading: swap the layers after
            from backends.transformers.hqq import quantize_hqq, read_hqq_config

            model = quantize_hqq(model.to(device), read_hqq_config(self.path), kwargs["dtype"], device)
        return (model if quantization is not None else model.to(device)).eval()

    def _half_dtype(self, dtype: Any) -> torch.dtype:
        """The compute dtype of a GPTQ checkpoint with per-module precision: float32 (the CPU default) becomes
        bfloat16; float32 asked for explicitly is refused with the reason."""
        if dtype != torch.float32:
            return dtype  # type: ignore[no-any-return]
        if self.options.dtype == "float32":
            raise UnsupportedOptionError(NAME, "dtype", "float32", HALF_ONLY)
        return torch.bfloat16

    def _set_threads(self, device: torch.device) -> None:
        """Size torch's CPU thread pool; ``threads`` on a GPU is refused, since nothing there would use it."""
        if device.type != "cpu":
            if self.options.threads is not None:
                raise UnsupportedOptionError(NAME, "threads", self.options.threads,
                                             f"only on CPU; the model runs on {device.type}")
            return
        torch.set_num_threads(self.options.threads or max(1, (os.cpu_count() or 2) - 1))

    def _context_window(self, config: Any) -> int:
        """``max_model_len``, checked against the model's config before any weight is loaded."""
        limit = int(getattr(config, "max_position_embeddings", 2048))
        wanted = self.options.max_model_len
        if wanted and wanted > limit:
            raise UnsupportedOptionError(NAME, "max_model_len", wanted,
                                         f"at most {limit}, the model's max_position_embeddings")
        return wanted or limit

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(int(i) for i in ids if i is not None)

    def stats(self) -> EngineStats:
        """Scheduler counters; raises if the worker died.

        The cache is dense and grows with the batch until memory runs out, so there is no fixed capacity to
        report: capacity and usage are None rather than a made-up ``max_batch x max_model_len``.
        """
        self.check_alive()
        return EngineStats(running=len(self._active) + len(self._chunking), waiting=self._inbox.qsize(),
                           kv_cache_usage=None, kv_capacity_tokens=None)

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must lie in ``0..vocab_size-1``: the rows of the model's input embeddings."""
        if self.model is None:
            return 0
        return int(self.model.get_input_embeddings().num_embeddings)

    # ---- worker thread ---------------------------------------------------------------------------
    def _pending(self, request: GenRequest, fields: dict[str, Any]) -> _Seq:
        generator = None
        if request.temperature >= kv.GREEDY_BELOW:
            generator = torch.Generator(device=self.model.device)
            generator.manual_seed(request.seed if request.seed is not None else int.from_bytes(os.urandom(4)))
        return _Seq(**fields, generator=generator)

    def _reset(self) -> None:
        self._batch = None
        self._chunking = []

    def _in_flight(self) -> list[_Seq]:
        return [*self._active, *self._chunking, *self._admitting]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            busy = self._active or self._chunking
            room = self.options.max_batch - len(self._active) - len(self._chunking)
            fresh = self._take(block=not busy, room=room)
            # Prompts whose logprobs are wanted are prefilled a chunk per iteration, between decode steps.
            self._chunking.extend(s for s in fresh if s.req.prompt_logprobs is not None)
            plain = [s for s in fresh if s.req.prompt_logprobs is None]
            if plain:
                self._admit_isolated(plain)
            if self._chunking:
                self._prefill_chunk_isolated()
            if self._active:
                self._step_isolated()

    def _attempt(self, step: Callable[[], None]) -> Exception | None:
        """Run a scheduler step and return its error, if any.

        A fatal error (:func:`~backends.inprocess.is_fatal`) is re-raised instead: the worker dies and ends
        every request still in flight with the reason.
        """
        try:
            step()
        except Exception as exc:
            if is_fatal(exc):
                raise
            return exc
        return None

    def _fail(self, seqs: Sequence[_Seq], exc: Exception, what: str) -> None:
        """End ``seqs`` with ``exc``; the rest of the batch goes on."""
        log.error("%s failed for %d request(s): %s: %s", what, len(seqs), type(exc).__name__, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        for seq in seqs:
            seq.send(exc)

    def _admit_isolated(self, fresh: list[_Seq]) -> None:
        """Prefill ``fresh`` together; if that fails, one by one, so that only the requests at fault fail."""
        for seq in fresh:
            seq.mark_started()
        self._admitting = fresh  # left set if a fatal error propagates, so that the worker ends them too
        exc = self._attempt(partial(self._admit, fresh))
        if exc is not None and len(fresh) > 1:
            for seq in fresh:
                if (one := self._attempt(partial(self._admit, [seq]))) is not None:
                    self._fail([seq], one, "prefill")
        elif exc is not None:
            self._fail(fresh, exc, "prefill")
        self._admitting = []

    def _step_isolated(self) -> None:
        """One decode step; a failed forward ends the requests of this batch (its cache is no longer sound)."""
        exc = self._attempt(self._step)
        if exc is not None:
            failed, self._active, self._batch = self._active, [], None
            self._fail(failed, exc, "decode step")

    def _admit(self, fresh: list[_Seq]) -> None:
        batch, logits = kv.prefill(self.model, [s.req.prompt_ids for s in fresh], self._pad)
        self._start_decoding(fresh, batch, [logits[row] for row in range(len(fresh))], [None] * len(fresh))

    def _start_decoding(self, seqs: Sequence[_Seq], batch: kv.KVBatch, last: Sequence[torch.Tensor],
                        prompt_lps: Sequence[tuple[TokenLogprob | None, ...] | None]) -> None:
        """Emit each prefilled sequence's first token and move the ones that go on into the running batch."""
        keep: list[int] = []
        for row, seq in enumerate(seqs):
            if seq.req.max_tokens == 0:
                seq.send(GenChunk((), "", None, "length", prompt_lps[row], len(seq.req.prompt_ids)))
            elif self._emit_isolated(seq, last[row], prompt_lps[row]):
                keep.append(row)
        admitted = kv.select(batch, keep)
        if admitted is not None:
            self._batch = kv.merge(self._batch, admitted)
            self._active.extend(seqs[i] for i in keep)

    def _prefill_chunk_isolated(self) -> None:
        """Advance the oldest prompt-logprobs request by one chunk; an error ends that request alone."""
        seq = self._chunking[0]
        exc = None if seq.aborted else self._attempt(partial(self._prefill_chunk, seq))
        if seq.aborted or exc is not None or seq.chunked is None:
            self._chunking.remove(seq)
        if exc is not None:
            self._fail([seq], exc, "prompt prefill")

    def _prefill_chunk(self, seq: _Seq) -> None:
        """Feed the next :data:`PROMPT_CHUNK` prompt tokens and score them; memory stays ``chunk x vocab``.

        After the last chunk the sequence starts decoding (``seq.chunked`` is cleared).
        """
        seq.mark_started()  # its first chunk: the oldest prompt-logprobs request starts only now
        ids, done = list(seq.req.prompt_ids), seq.done
        piece = ids[done:done + PROMPT_CHUNK]
        seq.chunked, logits = kv.extend(self.model, seq.chunked, piece)
        targets = ids[done + 1:done + 1 + len(piece)]  # logits row i predicts the token after piece[i]
        rows = torch.log_softmax(logits[:len(targets)], dim=-1)
        k = seq.req.prompt_logprobs or 0
        seq.prompt_lps.extend(TokenLogprob(t, float(rows[i, t]), top_logprobs(rows[i], k))
                              for i, t in enumerate(targets))
        seq.done = done + len(piece)
        if seq.done == len(ids):
            batch, seq.chunked = seq.chunked, None
            self._start_decoding([seq], batch, [logits[-1]], [(None, *seq.prompt_lps)])

    def _step(self) -> None:
        assert self._batch is not None
        logits = kv.decode(self.model, self._batch, [s.output[-1] for s in self._active])
        keep = [row for row, seq in enumerate(self._active) if self._emit_isolated(seq, logits[row], None)]
        if len(keep) != len(self._active):
            self._batch = kv.select(self._batch, keep)
            self._active = [self._active[i] for i in keep]

    def _emit_isolated(self, seq: _Seq, logits: torch.Tensor,
                       prompt_lps: tuple[TokenLogprob | None, ...] | None) -> bool:
        """:meth:`_emit`, where an error (a sampler fault, a detokenizer fault) ends ``seq`` alone."""
        try:
            return self._emit(seq, logits, prompt_lps)
        except Exception as exc:
            if is_fatal(exc):
                raise
            self._fail([seq], exc, "sampling")
            return False

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
