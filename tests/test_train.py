"""bench train: CLI errors (fast); every method lowers the loss and its merged model serves; QAT completes (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.checkpoints import Registry, load_registry
from bench.train.data import MATH_SFT, DataError, read_chat_jsonl
from tests.test_quantize import HF_MODEL, ask_two_plus_three, run_cli, tmp_registry


def small_set(tmp_path: Path, count: int) -> Path:
    """The first ``count`` examples of the bundled arithmetic set."""
    path = tmp_path / "math.jsonl"
    path.write_text("".join(line + "\n" for line in MATH_SFT.read_text().splitlines()[:count]))
    return path


def train(tmp_path: Path, registry: Path, method: str, *extra: str) -> tuple[int, str]:
    return run_cli("train", "--method", method, "--model", HF_MODEL, "--data", str(small_set(tmp_path, 8)),
                   "--name", f"test-{method}", "--output-dir", str(tmp_path / method), "--registry", str(registry),
                   "--batch-size", "2", "--seed", "0", *extra)


def losses(log: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def test_bundled_math_set_is_valid_chat_jsonl() -> None:
    chats = read_chat_jsonl(MATH_SFT)
    assert len(chats) == 200
    assert all(c[-1]["role"] == "assistant" and "=" in c[-1]["content"] for c in chats)


def test_bad_method_is_refused(tmp_path: Path) -> None:
    code, output = train(tmp_path, tmp_registry(tmp_path), "prune")
    assert code == 2
    assert "prune" in output and "lora" in output


def test_missing_data_file_is_refused(tmp_path: Path) -> None:
    code, output = run_cli("train", "--method", "lora", "--model", HF_MODEL, "--data", str(tmp_path / "nope.jsonl"),
                           "--registry", str(tmp_registry(tmp_path)))
    assert code == 2
    assert "nope.jsonl" in output and "does not exist" in output


def test_malformed_data_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "no reply"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: the last message must be the assistant's reply"):
        read_chat_jsonl(bad)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "lr"), [("lora", "1e-3"), ("dora", "1e-3"), ("vera", None), ("qlora", None),
                                            ("full", None)])
def test_training_lowers_loss_and_merged_model_serves(method: str, lr: str | None, prepared: Registry,
                                                      tmp_path: Path) -> None:
    """Each method, 3 steps (the method's default learning rate unless given): loss falls, the merge serves."""
    registry = tmp_registry(tmp_path)
    code, output = train(tmp_path, registry, method, "--max-steps", "3", *(("--lr", lr) if lr else ()))
    assert code == 0, output
    log = tmp_path / method / "train_log.jsonl"
    steps = losses(log)
    assert len(steps) == 3 and steps[-1] < steps[0], steps
    assert (tmp_path / method / "adapter" / "adapter_config.json").is_file() == (method != "full")
    entry = load_registry(registry).get(f"test-{method}")
    assert entry.format == "hf" and entry.derived_from == HF_MODEL
    assert entry.recipe and entry.recipe["method"] == method and entry.recipe["steps"] == 3
    assert "5" in ask_two_plus_three(registry, entry.name, tmp_path)


@pytest.mark.slow
def test_qat_run_completes_and_registers_a_torchao_int8_entry(prepared: Registry, tmp_path: Path) -> None:
    registry = tmp_registry(tmp_path)
    code, output = train(tmp_path, registry, "qat", "--max-steps", "2")
    assert code == 0, output
    entry = load_registry(registry).get("test-qat")
    assert entry.format == "torchao-int8" and entry.recipe and entry.recipe["serve_as"]
    merged = tmp_path / "qat" / "merged"
    assert (merged / "model.safetensors").is_file() and len(losses(tmp_path / "qat" / "train_log.jsonl")) == 2
