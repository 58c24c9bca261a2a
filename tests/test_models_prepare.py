"""`bench models prepare`: every derived checkpoint exists, with the quantization its recipe names."""

from __future__ import annotations

import json

from gguf import GGUFReader
from typer.testing import CliRunner

from bench.cli import build_app
from bench.models.registry import Registry

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
