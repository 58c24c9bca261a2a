"""Derive checkpoints from the bundled GGUF: HF bf16, then GGUF f16 / Q8_0 / Q4_K_M from the f16 conversion.

The quantized GGUFs are made from the f16 conversion, never requantized from the Q4_1 source
(requantizing damaged answers when tried). Every step writes into a temporary path and renames, so an
interrupted prepare leaves nothing half-written, and a finished step is never redone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.checkpoints import ModelEntry, Registry, RegistryError

# llama.cpp ``tokenizer.ggml.pre`` values whose pre-tokenizer splits digits one by one before GPT-2's
# byte-level regex (llama.cpp's llm_tokenizer_bpe: LLAMA_VOCAB_PRE_TYPE_SMOLLM, _STARCODER).
BYTE_LEVEL_DIGITS_PRE = ("smollm", "starcoder")

# llama.cpp's LLAMA_FTYPE_MOSTLY_* values.
FTYPES = {"Q8_0": 7, "Q4_K_M": 15, "Q4_K_S": 14, "Q5_K_M": 17, "Q6_K": 18, "Q4_0": 2}


class PrepareError(RuntimeError):
    """A derivation step failed."""


def dequantize_gguf_to_hf(gguf: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers (dequantized), copy it into a plain model and save it in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    repair_bpe_tokenizer(tokenizer, gguf)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def gguf_tokenizer_fields(gguf: Path) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` scalars of a GGUF (model, pre, special token ids), without the vocabulary."""
    from gguf import GGUFReader

    fields: dict[str, Any] = {}
    for key, field in GGUFReader(str(gguf)).fields.items():
        short = key.removeprefix("tokenizer.ggml.")
        if short == key or len(field.data) != 1 or short in ("tokens", "merges", "scores", "token_type"):
            continue
        value = field.parts[field.data[0]]
        fields[short] = bytes(value).decode() if field.types[0].name == "STRING" else value.tolist()[0]
    return fields


def repair_bpe_tokenizer(tokenizer: Any, gguf: Path) -> None:
    """Make the tokenizer transformers builds from a byte-level BPE GGUF tokenize and stop like llama.cpp.

    transformers 5.17 turns a ``gpt2`` GGUF vocabulary into a BPE with ``byte_fallback``, a SentencePiece
    decoder and EOS = BOS. ``convert_hf_to_gguf.py`` then reads the saved tokenizer as a SentencePiece
    ("llama") vocabulary, so every GGUF derived from it tokenized unlike the bundled one. Here the model,
    pre-tokenizer (llama.cpp's ``tokenizer.ggml.pre``), decoder and special tokens are set from the GGUF.
    """
    from tokenizers import decoders, pre_tokenizers

    fields = gguf_tokenizer_fields(gguf)
    if fields.get("model") != "gpt2":
        return
    backend = tokenizer.backend_tokenizer
    backend.model.byte_fallback = False
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if fields.get("pre") in BYTE_LEVEL_DIGITS_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    backend.decoder = decoders.ByteLevel()
    tokenizer.clean_up_tokenization_spaces = False  # a BPE decode must give back the text it encoded
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token_id = fields.get(f"{key}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def convert_hf_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16") -> None:
    """Run llama.cpp's vendored ``convert_hf_to_gguf.py`` on an HF checkpoint."""
    from backends.llamacpp.source import convert_script

    script, gguf_py = convert_script()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(gguf_py), str(script.parent)])}
    cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(out_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise PrepareError(f"convert_hf_to_gguf.py failed:\n{result.stderr[-3000:]}")


def quantize_gguf(src: Path, out_file: Path, ftype: str, threads: int | None = None,
                  tensor_types: dict[str, int] | None = None) -> None:
    """Quantize a GGUF with ``llama_model_quantize`` from llama-cpp-python; ``tensor_types`` maps a tensor-name
    regex to the ggml type it gets (llama-quantize's ``--tensor-type``)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise PrepareError("GGUF quantization needs: pip install 'servebench[llamacpp]'") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = threads or max(1, (os.cpu_count() or 2) - 1)
    if tensor_types:  # a null-terminated array, kept alive by ``overrides`` until the call returns
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))(
            *(llama_cpp.llama_model_tensor_override(p.encode(), t) for p, t in tensor_types.items()))
        params.tt_overrides = overrides
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(out_file).encode(), params)
    if code != 0:
        raise PrepareError(f"llama_model_quantize({ftype}) returned {code}")


def _produce(target: Path, make: Callable[[Path], None]) -> bool:
    """Build ``target`` through a temporary sibling; False if it already existed."""
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        staged = Path(tmp) / target.name
        make(staged)
        staged.rename(target)
    return True


def _step(registry: Registry, entry: ModelEntry, target: Path) -> Callable[[Path], None]:
    recipe = entry.recipe or {}
    step = recipe.get("step")
    source = recipe.get("source")
    if step == "gguf-dequantize":
        origin = registry.path_of(entry.derived_from or "")
        return lambda out: dequantize_gguf_to_hf(origin, out)
    if step == "convert_hf_to_gguf" and source:
        return lambda out: convert_hf_to_gguf(registry.path_of(source), out, recipe.get("outtype", "f16"))
    if step == "llama_model_quantize" and source:
        return lambda out: quantize_gguf(registry.path_of(source), out, str(recipe["ftype"]))
    raise PrepareError(f"model {entry.name!r} has no recipe that `bench models prepare` can run: {recipe}")


def _order(registry: Registry, base: str) -> list[ModelEntry]:
    """Derived entries of ``base`` in dependency order (sources before the entries made from them).

    Entries quantized at load (``recipe.load_time``: bitsandbytes, HQQ) are left out: their weights are their
    source's, so there is nothing to make.
    """
    pending = [e for e in registry.derived(base) if not (e.recipe or {}).get("load_time")]
    done: set[str] = {base}
    ordered: list[ModelEntry] = []
    while pending:
        ready = [e for e in pending if (e.recipe or {}).get("source", base) in done]
        if not ready:
            raise PrepareError(f"circular or unknown sources among: {[e.name for e in pending]}")
        for item in ready:
            ordered.append(item)
            done.add(item.name)
            pending.remove(item)
    return ordered


def prepare(registry: Registry, base: str, only: set[str] | None = None,
            on_step: Callable[[str, bool], None] | None = None) -> list[Path]:
    """Make every entry derived from ``base`` (or just ``only``, with what they need); returns their paths."""
    registry.path_of(base)  # fails early, with advice, if the source itself is missing
    paths = []
    for entry in _order(registry, base):
        if only is not None and entry.name not in only and not _needed_by(registry, entry.name, only):
            continue
        target = registry.location_of(entry.name)
        try:
            made = _produce(target, _step(registry, entry, target))
        except RegistryError as exc:
            raise PrepareError(str(exc)) from exc
        if on_step is not None:
            on_step(entry.name, made)
        paths.append(target)
    return paths


def _needed_by(registry: Registry, name: str, wanted: set[str]) -> bool:
    for other in wanted:
        source = (registry.get(other).recipe or {}).get("source")
        while source:
            if source == name:
                return True
            source = (registry.get(source).recipe or {}).get("source")
    return False

