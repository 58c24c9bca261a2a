"""The ExLlamaV3 engine: exllamav3's :class:`Generator` behind the shared ExLlama job loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from exllamav3 import Cache, CacheLayer_fp16, CacheLayer_quant, Config, Generator, Job, Model, Tokenizer
from exllamav3.generator.sampler import ArgmaxSampler, ComboSampler

from backends.base import Capabilities
from backends.exllamav2.jobloop import JobLoopEngine, Live, cache_tokens, draft_spec
from backends.exllamav3.config import CAPABILITIES, NAME, cache_layer_args

NGRAM_MATCH_MIN = 2  # shortest suffix match that drafts tokens in n-gram mode
MAX_CHUNK = 2048  # exllamav3's prefill chunk; a smaller cache must use chunks that fit it
# exllamav3 1.6.5 pads linear layers' output to multiples of 128 and does not trim the MLP's down projection, so a
# model whose hidden size is not one breaks the residual add ("576 must match 640" for SmolLM2-135M), in the
# loader and the converter alike (measured on an H200, reports in benchmarks/gpu/results).
HIDDEN_MULTIPLE = 128


def sampler(temperature: float, top_p: float) -> Any:
    """OpenAI sampling (temperature, top_p, nothing else) as an exllamav3 sampler."""
    if temperature <= 0:
        return ArgmaxSampler()
    return ComboSampler(temperature=temperature, top_p=top_p)


class ExLlamaV3Engine(JobLoopEngine):
    """In-process ExLlamaV3 engine (EXL3 checkpoints)."""

    name = NAME
    capabilities: Capabilities = CAPABILITIES

    def _load_backend(self) -> None:
        model, cache, config = self._load_model(self.path, None)
        self.max_model_len = self._length(config, None)
        self._vocab = int(config.vocab_size)
        self.kv_capacity = int(cache.max_num_tokens)
        spec = draft_spec(self.options, self.draft_path)
        draft_model = draft_cache = None
        if spec.draft_path is not None:
            draft_model, draft_cache, _ = self._load_model(spec.draft_path, self.max_model_len)
        self._gen = Generator(
            model=model, cache=cache, tokenizer=Tokenizer.from_config(config),
            max_batch_size=self.options.max_batch, max_chunk_size=min(MAX_CHUNK, self.kv_capacity),
            max_q_size=max(8, spec.num_tokens + 1),
            draft_model=draft_model, draft_cache=draft_cache, num_draft_tokens=spec.num_tokens or None,
            ngram_match_min=NGRAM_MATCH_MIN if spec.ngram else 0)

    def _length(self, config: Any, max_len: int | None) -> int:
        limit = int(config.max_position_embeddings)
        wanted = max_len or self.options.max_model_len or limit
        if wanted > limit and max_len is None:
            raise ValueError(f"max_model_len {wanted} exceeds the model's {limit}")
        return int(wanted)

    def _load_model(self, path: Path, max_len: int | None) -> tuple[Any, Any, Any]:
        """Model, cache and config; the cache is created before ``load()``, as exllamav3 requires."""
        config = Config.from_directory(str(path))
        hidden = getattr(config, "hidden_size", None)
        if isinstance(hidden, int) and hidden % HIDDEN_MULTIPLE:
            raise ValueError(f"exllamav3 cannot run {path.name}: its hidden size {hidden} is not a multiple of "
                             f"{HIDDEN_MULTIPLE} (exllamav3 1.6.5 pads the MLP output and breaks the residual)")
        model = Model.from_config(config)
        tokens = cache_tokens(self._length(config, max_len), self.options.max_batch)
        bits = cache_layer_args(self.options.kv_cache_dtype)
        cache = Cache(model, max_num_tokens=tokens, layer_type=CacheLayer_quant if bits else CacheLayer_fp16, **bits)
        model.load(progressbar=False, max_chunk_size=min(MAX_CHUNK, tokens))
        return model, cache, config

    def _make_job(self, live: Live, max_new: int, stop_ids: list[int], want_logits: bool) -> Any:
        req = live.req
        job = Job(input_ids=torch.tensor([list(req.prompt_ids)], dtype=torch.long), max_new_tokens=max_new,
                  min_new_tokens=req.min_tokens, sampler=sampler(req.temperature, req.top_p), seed=req.seed,
                  stop_conditions=stop_ids, return_logits=want_logits, identifier=live)
        self._gen.enqueue(job)
        return job

    def _pending_jobs(self) -> int:
        return int(self._gen.num_pending_jobs()) if self._gen is not None else 0

    def _prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        logits = self._gen.model.forward(torch.tensor([list(ids)], dtype=torch.long),
                                         {"attn_mode": "flash_attn_nc"})
        out: torch.Tensor = logits[0].float()
        return out

    def _after_finish(self) -> None:
        """Without prefix caching, forget finished jobs' pages so no later request reuses them."""
        if self.options.prefix_caching:
            return
        table = self._gen.pagetable
        for page in list(table.unreferenced_pages.values()):
            page.clear()
