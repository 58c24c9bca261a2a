"""bench models random: random-weight checkpoints of real shapes, served through a ``bench run`` sweep on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backends.checkpoints import Registry, load_registry
from bench.models.random import PAD_TOKEN, RandomModelError, pad_tokenizer, shape_config

HF = "smollm2-135m-instruct-hf"
TEXTS = ("What is 2+3? Answer in digits: 12345.", "naïve café – 東京 🚀", "<|im_start|>user\nhi<|im_end|>")


@pytest.fixture(scope="module")
def tokenizer_dir(registry: Registry) -> Path:
    from backends.prepare import prepare

    prepare(registry, "smollm2-135m-instruct", only={HF})
    return registry.path_of(HF)


def test_llama_8b_shape_has_the_published_parameter_count_and_kv_size() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(shape_config("llama-3.1-8b"))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248  # Meta-Llama-3.1-8B
    # bf16 K and V for every layer and KV head: 128 KiB per token.
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2
    assert kv_bytes == 131072
    assert config.rope_parameters["rope_type"] == "llama3"
    with pytest.raises(RandomModelError, match=r"known: llama-3\.1-8b"):
        shape_config("llama-9")


def test_padded_tokenizer_encodes_as_before_and_decodes_every_id(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    added = pad_tokenizer(tokenizer_dir, tmp_path / "tok", 65536)
    source, padded = AutoTokenizer.from_pretrained(tokenizer_dir), AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert added == 65536 - len(source) and len(padded) == 65536
    for text in TEXTS:
        assert padded.encode(text) == source.encode(text)
    assert padded.decode([65535]) == PAD_TOKEN.format(65535)
    assert padded.decode([len(source) - 1]) == source.decode([len(source) - 1])
    with pytest.raises(RandomModelError, match="more than the shape's vocabulary of 1000"):
        pad_tokenizer(tokenizer_dir, tmp_path / "small", 1000)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=900,
                          check=False)


@pytest.fixture(scope="module")
def tiny_registry(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of models.yaml with a random tiny-llama entry made by ``bench models random``."""
    root = tmp_path_factory.mktemp("random")
    models = root / "models.yaml"
    shutil.copy(Path(__file__).parents[1] / "models.yaml", models)
    proc = _bench("models", "random", "tiny-random", "--shape", "tiny-llama", "--tokenizer", HF,
                  "--out", str(root / "tiny"), "--registry", str(models))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return models


def test_bench_models_random_registers_a_loadable_checkpoint(tiny_registry: Path) -> None:
    from transformers import AutoModelForCausalLM

    registry = load_registry(tiny_registry)
    entry, path = registry.get("tiny-random"), registry.path_of("tiny-random")
    assert entry.format == "hf" and entry.recipe == {"tool": "bench models random", "shape": "tiny-llama",
                                                     "tokenizer": HF, "dtype": "bfloat16", "seed": 0}
    model = AutoModelForCausalLM.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (64, 2, 65536)
    assert not list(path.parent.glob(".tiny.*"))  # the build folder was renamed away
    again = _bench("models", "random", "tiny-random", "--shape", "llama-3.2-1b", "--tokenizer", HF,
                   "--out", str(path), "--registry", str(tiny_registry))
    assert again.returncode == 2 and "already exists" in again.stdout


def test_sweep_inside_bench_run_on_the_random_model(tiny_registry: Path, tmp_path: Path) -> None:
    """The multi-GPU matrix's shape on one CPU: a rate sweep with an SLO inside ``bench run``, two option sets
    run in two invocations (``--only``, then ``--resume``), and the report."""
    matrix = tmp_path / "m.yaml"
    matrix.write_text(yaml.safe_dump({
        "name": "sweep", "models": ["tiny-random"], "backends": ["transformers"],
        "option_sets": [{"name": "one", "options": {"max_batch": 4, "max_model_len": 256, "threads": 1}},
                        {"name": "two", "options": {"max_batch": 4, "tensor_parallel_size": 2}}],
        "scenarios": [{"kind": "load", "name": "sweep", "workload": {"kind": "random", "input_tokens": 16,
                                                                     "output_tokens": 8},
                       "sweep": {"mode": "rate", "start": 2, "factor": 2, "max_value": 8, "refine_steps": 1},
                       "requests_per_point": 6, "warmup": 1, "slo": {"ttft_ms": 5000, "tpot_ms": 1000}}]}))
    env = {**os.environ, "SERVEBENCH_MODELS": str(tiny_registry)}  # the load client finds the tokenizer too
    first = subprocess.run([sys.executable, "-m", "bench", "run", str(matrix), "--out", str(tmp_path), "--run-id",
                            "r", "--only", "*__one__*"], capture_output=True, text=True, timeout=900, check=False,
                           env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "r"
    assert not (run / "cells" / "transformers__tiny-random__two__s0").exists()
    cell = json.loads((run / "cells" / "transformers__tiny-random__one__s0" / "cell.json").read_text())
    sweep = cell["scenarios"]["sweep"]
    assert sweep["mode"] == "rate" and sweep["points"], cell
    assert set(sweep["points"]) >= {"2", "4"}
    for value, point in sweep["points"].items():
        assert point["num_ok"] == 6 and {"passed", "saturated"} <= set(point) and point["dir"] == f"sweep/rate-{value}"
        assert (run / "cells" / cell["cell_id"] / point["dir"] / "requests.jsonl").exists()
    assert sweep["best"] is None or sweep["points"][f"{sweep['best']:g}"]["passed"]
    # The Transformers engine's cache grows with the batch: it has no fixed capacity, and none is made up.
    assert (cell.get("kv") or {}).get("capacity_tokens") is None
    second = subprocess.run([sys.executable, "-m", "bench", "run", "--resume", str(run)], capture_output=True,
                            text=True, timeout=900, check=False, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    skipped = json.loads((run / "cells" / "transformers__tiny-random__two__s0" / "cell.json").read_text())
    assert skipped["status"] == "skipped" and "parallelism=(2, 1, 1)" in skipped["reason"]
    md = (run / "report.md").read_text()
    assert "| sweep | 2 |" in md and "parallelism=(2, 1, 1)" in md

