"""Random-weight checkpoints of real model shapes, for speed runs where the real weights cannot be fetched.

Latency, throughput and KV-cache capacity depend on a model's shape and dtype, not on its weight values, so
a checkpoint with a real architecture and random weights measures what the real one would (vLLM's
``--load-format dummy`` does the same inside vLLM). Its answers are noise: never evaluate one.

The tokenizer comes from another checkpoint. Its vocabulary is padded with placeholder tokens up to the
shape's, so every id the model can sample decodes to text and streaming servers emit one chunk per token.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from backends.checkpoints import ModelEntry

# Architectures as their publishers' config.json files give them (vocabulary, layers, heads, RoPE), so the
# KV cache per token and the FLOPs per token are the real model's.
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
SHAPES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "llama-3.1-8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                     "rope_parameters": {**_LLAMA3_ROPE, "factor": 8.0}},
    "llama-3.2-1b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                     "rope_parameters": {**_LLAMA3_ROPE, "factor": 32.0}},
    # Not a published model: a few MB, for tests and smoke runs on a CPU.
    "tiny-llama": {"model_type": "llama", "vocab_size": 65536, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
})
PAD_TOKEN = "<|servebench_pad_{}|>"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class RandomModelError(Exception):
    """The shape is unknown, or the tokenizer cannot serve it."""


def shape_config(shape: str) -> Mapping[str, Any]:
    """The config fields of a named shape; an unknown name lists the known ones."""
    try:
        return SHAPES[shape]
    except KeyError:
        raise RandomModelError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}") from None


def pad_tokenizer(source: Path, out: Path, vocab_size: int) -> int:
    """Copy the tokenizer files of ``source`` to ``out``, padding the vocabulary to ``vocab_size`` ids.

    Placeholder tokens take the free ids above the tokenizer's own; they are plain vocabulary entries (no
    merges reach them), so encoding is unchanged. Returns how many were added.
    """
    data = json.loads((source / "tokenizer.json").read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    used = set(vocab.values()) | {int(t["id"]) for t in data.get("added_tokens", [])}
    if max(used) >= vocab_size:
        raise RandomModelError(f"the tokenizer in {source} has ids up to {max(used)}, more than the shape's "
                               f"vocabulary of {vocab_size}")
    free = [i for i in range(vocab_size) if i not in used]
    vocab.update({PAD_TOKEN.format(i): i for i in free})
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "tokenizer.json" and not item.name.endswith(_WEIGHT_SUFFIXES) \
                and item.name not in ("config.json", "generation_config.json"):
            shutil.copy2(item, out / item.name)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return len(free)


def make_random_model(shape: str, tokenizer: Path, out: Path, device: str = "cpu", dtype: str = "bfloat16",
                      seed: int = 0) -> Path:
    """Write an HF checkpoint of ``shape`` with random weights (normal, std 0.02) and a padded tokenizer.

    The weights are drawn on ``device`` (``cuda`` makes an 8B model in seconds). The folder is built beside
    ``out`` and renamed, so a stopped run never leaves a half-written checkpoint.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    fields = dict(shape_config(shape))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        work = Path(tmp) / "model"
        pad_tokenizer(tokenizer, work, int(fields["vocab_size"]))
        tok = AutoTokenizer.from_pretrained(work)
        if len(tok) != fields["vocab_size"]:
            raise RandomModelError(f"padded tokenizer has {len(tok)} tokens, the shape {fields['vocab_size']}")
        config = AutoConfig.for_model(fields.pop("model_type"), **fields, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                      initializer_range=0.02, dtype=dtype)
        torch.manual_seed(seed)
        build = AutoModelForCausalLM.from_config
        with torch.device(device):
            model = build(config, dtype=getattr(torch, dtype))  # type: ignore[no-untyped-call]
        model.save_pretrained(work, max_shard_size="5GB")
        del model
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return out


def random_entry(name: str, shape: str, out: Path, tokenizer: str, dtype: str, seed: int) -> ModelEntry:
    """The models.yaml entry of a random-weight checkpoint (its recipe makes it again)."""
    return ModelEntry(name=name, format="hf", path=str(out),
                      recipe={"tool": "bench models random", "shape": shape, "tokenizer": tokenizer,
                              "dtype": dtype, "seed": seed},
                      description=f"random weights in the {shape} shape: for speed runs only, its answers are noise")
