"""MBU's weight bytes: what a cell records for its load runs, and what the engine keeps when it quantizes a
16-bit checkpoint at load (backends.weightbytes)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_file

from backends.base import EngineOptions
from backends.weightbytes import weight_bytes_at_load
from bench.load.arrivals import ConcurrencyArrival
from bench.run.scenarios import CellRun
from bench.run.schema import LoadScenario


def _checkpoint(folder: Path) -> Path:
    folder.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4, dtype=torch.bfloat16),  # 80 bytes, kept
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4, dtype=torch.bfloat16),  # 32 -> 16 / 8
               "model.layers.0.input_layernorm.weight": torch.zeros(4, dtype=torch.bfloat16),  # 8, kept
               "model.norm.weight": torch.zeros(4, dtype=torch.bfloat16)},  # 8, kept
              str(folder / "model.safetensors"))
    return folder


def test_linear_weights_of_decoder_layers_shrink_and_the_rest_is_read_as_stored(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "hf")
    assert weight_bytes_at_load(folder, "fp8") == 80 + 16 + 8 + 8
    assert weight_bytes_at_load(folder, "bitsandbytes") == 80 + 8 + 8 + 8
    assert weight_bytes_at_load(folder, "some-new-method") is None  # unknown width: the files' size is used
    assert weight_bytes_at_load(tmp_path / "missing", "fp8") is None


def test_a_cell_that_quantizes_at_load_gives_its_load_runs_those_bytes(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "hf")

    def config(options: EngineOptions, model_format: str = "hf") -> Any:
        spec = SimpleNamespace(options=options, model_format=model_format, model_path=folder)
        handle: Any = SimpleNamespace(url="http://127.0.0.1:9", model="m", spec=spec)
        run = CellRun(handle, "cell", tmp_path, seed=0, max_batch=8, progress=None, memory=None)  # type: ignore[arg-type]
        return run.scenario_config(LoadScenario(tokenizer="tok"), ConcurrencyArrival(n=1))

    files = (folder / "model.safetensors").stat().st_size  # the tensors' bytes and the safetensors header
    assert config(EngineOptions(quantization="fp8")).model_bytes == 112
    # Otherwise the checkpoint's files, recorded in the point's load_config.json: its MBU then recomputes from
    # the run folder on a machine that does not hold the checkpoint (the GPU seed tables' case).
    assert config(EngineOptions()).model_bytes == files
    assert config(EngineOptions(quantization="fp8"), "gptq").model_bytes == files  # already quantized on disk
