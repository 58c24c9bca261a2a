"""Tensor work for continuous batching: left-padded batched KV cache, prefill, decode and sampling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass
class KVBatch:
    """The running batch's cache; row ``i`` belongs to the i-th running sequence.

    ``mask`` is ``[B, T]`` with 1 for real tokens; sequences are left-padded to a common length.
    """

    cache: DynamicCache
    mask: torch.Tensor

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return int(self.mask.shape[0])

    def tokens(self) -> int:
        """Real tokens held in the cache."""
        return int(self.mask.sum())


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - t.shape[-2] if t.dim() == 4 else length - t.shape[-1]
    if extra <= 0:
        return t
    if t.dim() == 4:
        return torch.nn.functional.pad(t, (0, 0, extra, 0))
    return torch.nn.functional.pad(t, (extra, 0))


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key/value holders (full-attention layers expose ``keys``/``values``)."""
    return list(cache.layers)


def merge(a: KVBatch | None, b: KVBatch) -> KVBatch:
    """Append ``b``'s rows to ``a``, left-padding whichever is shorter."""
    if a is None:
        return b
    length = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(_layers(a.cache), _layers(b.cache), strict=True):
        la.keys = torch.cat([_pad_left(la.keys, length), _pad_left(lb.keys, length)])
        la.values = torch.cat([_pad_left(la.values, length), _pad_left(lb.values, length)])
    a.mask = torch.cat([_pad_left(a.mask, length), _pad_left(b.mask, length)])
    return a


def select(batch: KVBatch, keep: Sequence[int]) -> KVBatch | None:
    """Keep only rows ``keep``; drop columns that are padding in every remaining row."""
    if not keep:
        return None
    index = torch.tensor(list(keep), device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int((mask.sum(0) > 0).nonzero()[0])
    batch.mask = mask[:, start:]
    for layer in _layers(batch.cache):
        layer.keys = layer.keys.index_select(0, index)[:, :, start:]
        layer.values = layer.values.index_select(0, index)[:, :, start:]
    return batch


@torch.inference_mode()
def prefill(model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[KVBatch, torch.Tensor]:
    """Run the prompts as one left-padded batch; returns the cache and the last position's ``[B, V]`` logits."""
    device = model.device
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), length), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.tensor(list(prompt), device=device)
        mask[row, length - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return KVBatch(cache=out.past_key_values, mask=mask), out.logits[:, -1, :].float()


@torch.inference_mode()
def extend(model: PreTrainedModel, batch: KVBatch | None, piece: Sequence[int]) -> tuple[KVBatch, torch.Tensor]:
    """Feed the next ``piece`` of one sequence's prompt (a chunked prefill, no padding).

    Returns the sequence's cache (``batch`` grown, or a new one) and the ``[len(piece), V]`` logits of the piece.
    """
    device = model.device
    past = 0 if batch is None else int(batch.mask.shape[1])
    ids = torch.tensor([list(piece)], dtype=torch.long, device=device)
    mask = torch.ones((1, past + len(piece)), dtype=torch.long, device=device)
    positions = torch.arange(past, past + len(piece), device=device).unsqueeze(0)
    cache = DynamicCache(config=model.config) if batch is None else batch.cache
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    return KVBatch(cache=out.past_key_values, mask=mask), out.logits[0].float()


@torch.inference_mode()
def decode(model: PreTrainedModel, batch: KVBatch, last_tokens: Sequence[int]) -> torch.Tensor:
    """One decode step for every row; returns ``[B, V]`` logits and grows the cache by one column."""
    device = batch.mask.device
    ids = torch.tensor(list(last_tokens), dtype=torch.long, device=device).unsqueeze(1)
    positions = batch.mask.sum(-1, keepdim=True)
    batch.mask = torch.cat([batch.mask, torch.ones_like(ids)], dim=1)
    out = model(input_ids=ids, attention_mask=batch.mask, position_ids=positions,
                past_key_values=batch.cache, use_cache=True)
    batch.cache = out.past_key_values
    logits: torch.Tensor = out.logits[:, -1, :].float()
    return logits


# Below this temperature sampling is greedy (vLLM's threshold): dividing logits by a tinier one overflows
# them to inf, and the softmax of inf is NaN.
GREEDY_BELOW = 1e-5


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from one row of logits: greedy at (near) temperature 0, else temperature and nucleus sampling."""
    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
