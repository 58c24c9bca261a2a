"""One ``bench train`` run: data, model, transformers' Trainer, then adapter + merged checkpoint + entry.

Layout of the output folder::

    <out>/adapter/          peft adapter (adapter methods only)
    <out>/merged/           the plain HF checkpoint that models.yaml points at (bf16, with tokenizer)
    <out>/train_log.jsonl   one line per optimizer step: step, loss, learning_rate, grad_norm, epoch, t
    <out>/train_spec.json   the resolved settings
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backends.checkpoints import ModelEntry
from bench.train import methods
from bench.train.artifacts import check_new_name, default_output_dir, fresh_dir, hf_source, register
from bench.train.config import TrainSpec
from bench.train.data import IGNORE_INDEX, Example, read_chat_jsonl, tokenize_chat


@dataclass(frozen=True)
class TrainResult:
    """What a run wrote."""

    entry: ModelEntry
    output_dir: Path
    merged_dir: Path
    adapter_dir: Path | None
    log_path: Path
    losses: list[float]
    seconds: float


class _Examples(torch.utils.data.Dataset[Example]):
    def __init__(self, items: list[Example]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        return self.items[index]


def _collate(pad_id: int) -> Any:
    """Right-pad a batch; padded label positions are ignored by the loss."""
    def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex.input_ids)
            ids[row, :n] = torch.tensor(ex.input_ids)
            labels[row, :n] = torch.tensor(ex.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return collate


def _loss_logger(path: Path) -> Any:
    """A Trainer callback appending each logged training step to ``path`` as JSONL."""
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            row: dict[str, Any] = {"step": state.global_step, "t": time.time(),
                   **{k: logs[k] for k in ("loss", "learning_rate", "grad_norm", "epoch") if k in logs}}
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    return LossLogger()


def _training_args(spec: TrainSpec, scratch: Path, device: torch.device) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(scratch), per_device_train_batch_size=spec.batch_size, learning_rate=spec.lr(),
        lr_scheduler_type=spec.scheduler, warmup_steps=spec.warmup_steps, num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1, seed=spec.seed, data_seed=spec.seed, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=device.type == "cpu", dataloader_num_workers=0,
        bf16=device.type == "cuda", remove_unused_columns=False, disable_tqdm=False,
    )


def _recipe(spec: TrainSpec, losses: list[float], steps: int, seconds: float, adapter: Path | None) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "tool": "bench train", "method": spec.method, "data": str(spec.data.resolve()),
        "data_sha256": hashlib.sha256(spec.data.read_bytes()).hexdigest()[:16],
        "learning_rate": spec.lr(), "scheduler": spec.scheduler, "epochs": spec.epochs, "steps": steps,
        "batch_size": spec.batch_size, "seed": spec.seed, "train_seconds": round(seconds, 1),
        "first_loss": round(losses[0], 4) if losses else None, "final_loss": round(losses[-1], 4) if losses else None,
    }
    if spec.method in ("lora", "dora", "vera", "qlora"):
        recipe.update(rank=spec.lora_rank(), target_modules=list(spec.target_modules), adapter=str(adapter))
        if spec.method != "vera":
            recipe["alpha"] = spec.lora_alpha()
    if spec.method == "qat":
        recipe.update(fake_quant="int8 asymmetric per-token activations, int8 symmetric per-channel weights",
                      serve_as=methods.QAT_SCHEME)
    return recipe


def _read_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    return [float(json.loads(line)["loss"]) for line in path.read_text().splitlines() if line.strip()]


def train(spec: TrainSpec, registry_file: Path | None = None) -> TrainResult:
    """Fine-tune, save the adapter and merged checkpoint, and register the merged one."""
    from transformers import AutoTokenizer, Trainer, set_seed

    registry, base_path = hf_source(registry_file, spec.model)
    name = spec.entry_name()
    check_new_name(registry, name)
    chats = read_chat_jsonl(spec.data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(spec.seed)
    out = fresh_dir(spec.output_dir or default_output_dir("trained", name))
    (out / "train_spec.json").write_text(spec.model_dump_json(indent=2))
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    examples = [tokenize_chat(tokenizer, chat, spec.max_length) for chat in chats]
    model = methods.prepare_for_training(methods.load_base(base_path, spec, device), spec)
    log_path = out / "train_log.jsonl"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(model=model, args=_training_args(spec, out / "scratch", device),
                      train_dataset=_Examples(examples), data_collator=_collate(int(pad)),
                      callbacks=[_loss_logger(log_path)])
    start = time.monotonic()
    state = trainer.train()
    seconds = time.monotonic() - start
    shutil.rmtree(out / "scratch", ignore_errors=True)
    adapter_dir = _save_adapter(model, spec, out)
    merged_dir = _save_merged(methods.merged_model(model, spec, base_path, out / "adapter"), tokenizer, out)
    losses = _read_losses(log_path)
    recipe = _recipe(spec, losses, int(state.global_step), seconds, adapter_dir)
    fmt = "torchao-int8" if spec.method == "qat" else "hf"
    entry = register(registry_file or registry.source, name=name, fmt=fmt, path=merged_dir,
                     derived_from=spec.model, recipe=recipe,
                     description=f"{spec.method} fine-tune of {spec.model} on {spec.data.name}")
    return TrainResult(entry, out, merged_dir, adapter_dir, log_path, losses, seconds)


def _save_adapter(model: Any, spec: TrainSpec, out: Path) -> Path | None:
    if spec.method in ("full", "qat"):
        return None
    model.save_pretrained(str(out / "adapter"))
    return out / "adapter"


def _save_merged(model: Any, tokenizer: Any, out: Path) -> Path:
    merged = out / "merged"
    model = model.to("cpu").to(torch.bfloat16)
    model.save_pretrained(str(merged))
    tokenizer.save_pretrained(str(merged))
    return merged
