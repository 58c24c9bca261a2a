"""`bench models prepare`: every derived checkpoint exists, with the quantization its recipe names."""

from __future__ import annotations

import json

from gguf import GGUFReader
from typer.testing import CliRunner

from backends.checkpoints import Registry
from bench.cli import build_app

# llama.cpp's general.file_type values.
FILE_TYPES = {"smollm2-135m-instruct-f16": 1, "smollm2-135m-instruct-q8_0": 7, "smollm2-135m-instruct-q4_k_m": 15}


def _file_type(path: str) -> int:
    field = GGUFReader(path).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def test_prepare_is_idempotent_and_reports_cached(prepared: Registry) -> None:
    result = CliRunner().invoke(build_app(), ["models", "prepare"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert result.output.count("cached") == 4


def test_hf_checkpoint_is_bf16_llama(prepared: Registry) -> None:
    folder = prepared.path_of("smollm2-135m-instruct-hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert (folder / "tokenizer.json").exists() and (folder / "model.safetensors").exists()


def test_ggufs_have_the_recipe_quantization(prepared: Registry) -> None:
    sizes = {}
    for name, file_type in FILE_TYPES.items():
        path = prepared.path_of(name)
        assert _file_type(str(path)) == file_type
        sizes[name] = path.stat().st_size
    assert sizes["smollm2-135m-instruct-f16"] > sizes["smollm2-135m-instruct-q8_0"] > sizes[
        "smollm2-135m-instruct-q4_k_m"]


TEXTS = ["What is 2+3?", "The year 12345 had 3.14159 apples.", "  leading spaces\nand\ttabs",
         "<|im_start|>user\nHello<|im_end|>\n", "naïve café 東京 🙂", "x=y**2; print(f'{x:>10}')"]


def _llama_tokens(path: str) -> list[list[int]]:
    from llama_cpp import Llama

    vocab = Llama(path, vocab_only=True, verbose=False)
    return [vocab.tokenize(text.encode(), add_bos=False, special=True) for text in TEXTS]


def test_derived_tokenizers_match_the_bundled_gguf(prepared: Registry) -> None:
    """The HF tokenizer and every derived GGUF tokenize, decode and stop exactly like the bundled GGUF."""
    from transformers import AutoTokenizer

    from backends.prepare import gguf_tokenizer_fields

    bundled = prepared.path_of("smollm2-135m-instruct")
    expected = _llama_tokens(str(bundled))
    hf = AutoTokenizer.from_pretrained(str(prepared.path_of("smollm2-135m-instruct-hf")))
    assert [hf.encode(text, add_special_tokens=False) for text in TEXTS] == expected
    assert [hf.decode(ids) for ids in expected] == TEXTS
    assert (hf.eos_token, hf.bos_token) == ("<|im_end|>", "<|im_start|>")
    fields = gguf_tokenizer_fields(bundled)
    for name in FILE_TYPES:
        path = str(prepared.path_of(name))
        derived = gguf_tokenizer_fields(prepared.path_of(name))
        assert {k: derived.get(k) for k in fields} == fields, name  # gpt2/smollm, not a SentencePiece vocabulary
        assert _llama_tokens(path) == expected, name
