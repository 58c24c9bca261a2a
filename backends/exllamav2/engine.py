"""The ExLlamaV2 engine: :class:`ExLlamaV2DynamicGenerator` behind :class:`JobLoopEngine`.

Paged (batched) mode needs flash-attn >= 2.5.7. Without it the generator runs unpaged, one sequence at a
time; the engine then refuses ``max_batch > 1`` at start and reports ``batching="none"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import exllamav2
import torch
from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer
from exllamav2 import attn as exl_attn
from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

from backends.base import Capabilities
from backends.errors import UnsupportedOptionError
from backends.exllamav2.config import CACHE_CLASSES, CAPABILITIES, NAME
from backends.exllamav2.jobloop import JobLoopEngine, Live, cache_tokens, draft_spec


def sampler_settings(temperature: float, top_p: float) -> Any:
    """OpenAI sampling (temperature, top_p, nothing else) as exllamav2 sampler settings."""
    if temperature <= 0:
        return ExLlamaV2Sampler.Settings.greedy()
    return ExLlamaV2Sampler.Settings(temperature=temperature, top_p=top_p if top_p < 1 else 0.0, top_k=0,
                                     min_p=0.0, token_repetition_penalty=1.0)


def sdpa_drops_causal_mask() -> bool:
    """Whether exllamav2 0.3.2 would run prompts through its SDPA path, which is not causal.

    Without flash-attn and xformers, ``ExLlamaV2Attention._attn_torch`` takes the torch SDPA branch, where
    ``if layer in block_diag_layers or causal`` picks ``get_block_diag_mask()``; that is ``None`` for an
    ordinary prompt, so every prompt token attends to the tokens after it (measured on an H100: a coherent
    but wrong "Hugging Face" for the capital of France). The matmul branch builds the causal mask, so we
    force it (``config.no_sdpa``, the library's own switch; ``EXLLAMA_NO_SDPA`` in the environment).
    """
    return not (exl_attn.has_flash_attn or exl_attn.has_xformers)


def apply_rope_parameters(config: Any, path: Path) -> None:
    """Read RoPE theta from transformers 5's ``rope_parameters``, which exllamav2 0.3.2 does not know.

    Without this a checkpoint saved by transformers 5 silently runs with exllamav2's default theta (10000;
    SmolLM2 needs 100000), which degrades output without any error. Scaled RoPE written only there is refused.
    """
    raw = json.loads((path / "config.json").read_text())
    params = raw.get("rope_parameters")
    if "rope_theta" in raw or not isinstance(params, dict):
        return
    if params.get("rope_type", "default") != "default" and "rope_scaling" not in raw:
        raise ValueError(f"{path}: rope_parameters {params} (scaled RoPE) is not readable by exllamav2 0.3.2; "
                         "add the matching rope_scaling to config.json")
    if "rope_theta" in params:
        config.rotary_embedding_base = float(params["rope_theta"])


class ExLlamaV2Engine(JobLoopEngine):
    """In-process ExLlamaV2 engine (EXL2, GPTQ or FP16 checkpoints)."""

    name = NAME
    capabilities: Capabilities = CAPABILITIES

    def _load_backend(self) -> None:
        paged = bool(exl_attn.has_flash_attn_with_paged)
        if not paged and self.options.max_batch > 1:
            raise UnsupportedOptionError(NAME, "max_batch", self.options.max_batch,
                                         "1: flash-attn >= 2.5.7 is not installed, so exllamav2 runs unpaged")
        if not paged and self.options.prefix_caching:
            raise UnsupportedOptionError(NAME, "prefix_caching", True,
                                         "only with flash-attn (unpaged mode keeps no reusable pages)")
        self.with_batching("continuous" if paged else "none")
        model, cache, config = self._load_model(self.path, None)
        self.max_model_len = int(config.max_seq_len)
        self._vocab = int(config.vocab_size)
        self.kv_capacity = int(cache.max_seq_len)
        spec = draft_spec(self.options, self.draft_path)
        draft_model = draft_cache = None
        if spec.draft_path is not None:
            draft_model, draft_cache, _ = self._load_model(spec.draft_path, self.max_model_len)
        self._gen = ExLlamaV2DynamicGenerator(
            model=model, cache=cache, tokenizer=ExLlamaV2Tokenizer(config),
            max_batch_size=self.options.max_batch, max_seq_len=self.max_model_len, paged=paged,
            max_q_size=max(8, spec.num_tokens + 1), draft_model=draft_model, draft_cache=draft_cache,
            num_draft_tokens=spec.num_tokens or 4, use_ngram_draft=spec.ngram)

    def _load_model(self, path: Path, max_len: int | None) -> tuple[Any, Any, Any]:
        """Model, cache and config; the draft model gets the main model's length and cache size."""
        config = ExLlamaV2Config(str(path))
        wanted = max_len or self.options.max_model_len
        if wanted:
            if wanted > config.max_seq_len and max_len is None:
                raise ValueError(f"max_model_len {wanted} exceeds the model's {config.max_seq_len}")
            config.max_seq_len = wanted
        apply_rope_parameters(config, path)
        config.no_sdpa = config.no_sdpa or sdpa_drops_causal_mask()
        config.arch_compat_overrides()
        model = ExLlamaV2(config)
        sequences = self.options.max_batch if exl_attn.has_flash_attn_with_paged else 1
        cache_class = getattr(exllamav2, CACHE_CLASSES[self.options.kv_cache_dtype])
        cache = cache_class(model, max_seq_len=cache_tokens(config.max_seq_len, sequences), lazy=True)
        model.load_autosplit(cache, progress=False)
        return model, cache, config

    def _make_job(self, live: Live, max_new: int, stop_ids: list[int], want_logits: bool) -> Any:
        req = live.req
        job = ExLlamaV2DynamicJob(
            input_ids=torch.tensor([list(req.prompt_ids)], dtype=torch.long), max_new_tokens=max_new,
            min_new_tokens=req.min_tokens, gen_settings=sampler_settings(req.temperature, req.top_p),
            seed=req.seed, stop_conditions=stop_ids, return_logits=want_logits, identifier=live)
        self._gen.enqueue(job)
        return job

    def _pending_jobs(self) -> int:
        return len(self._gen.pending_jobs) if self._gen is not None else 0

    def _prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        logits = self._gen.model.forward(torch.tensor([list(ids)], dtype=torch.long), last_id_only=False)
        out: torch.Tensor = logits[0].float()
        return out

    def _after_finish(self) -> None:
        """Without prefix caching, forget finished jobs' pages so no later request reuses them."""
        if self.options.prefix_caching or not self._gen.paged:
            return
        for page in list(self._gen.unreferenced_pages.values()):
            page.clear()
