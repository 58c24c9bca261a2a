"""``bench quantize --model NAME --to TARGET``: write a quantized checkpoint and its models.yaml entry."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import typer
from rich.console import Console

# The engine built for a format, named in the "serve it" hint; every other format is served by transformers
# (the engine that loads them all; `bench backends` lists the rest).
NATIVE_BACKEND = MappingProxyType({"gguf": "llamacpp", "exl2": "exllamav2", "exl3": "exllamav3"})


class To(StrEnum):
    """Quantization targets (kept in step with bench.quantize.targets.TARGETS by a test)."""

    gguf_f16 = "gguf-f16"
    gguf_q8_0 = "gguf-q8_0"
    gguf_q4_k_m = "gguf-q4_k_m"
    gptq_4bit = "gptq-4bit"
    awq_4bit = "awq-4bit"
    w4a16 = "w4a16"
    fp8 = "fp8"
    w8a8_smoothquant = "w8a8-smoothquant"
    w8a8_int8 = "w8a8-int8"
    bnb_4bit = "bnb-4bit"
    bnb_8bit = "bnb-8bit"
    torchao_int8 = "torchao-int8"
    hqq_4bit = "hqq-4bit"
    hqq_8bit = "hqq-8bit"
    exl2 = "exl2"
    exl3 = "exl3"


def quantize_command(
    model: str = typer.Option(..., "--model", help="Source checkpoint: an HF entry of models.yaml, or ORG/NAME."),
    to: To = typer.Option(..., "--to", help="Target format."),
    name: str | None = typer.Option(None, "--name", help="Entry to write (default MODEL-TARGET, with --bits "
                                    "MODEL-TARGET-BITSbpw)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Default: {cache}/models/quantized/NAME."),
    samples: int = typer.Option(32, "--calibration-samples", help="GPTQ/AWQ/W4A16/W8A8 calibration texts."),
    registry: Path | None = typer.Option(None, "--registry", help="models.yaml to append to."),
    keep_bf16: list[str] = typer.Option([], "--keep-bf16", help="Keep linear modules matching this glob in bf16 "
                                        "(repeatable: lm_head, '*.self_attn.*', 'model.layers.0.*')."),
    layers_bits: str | None = typer.Option(None, "--layers-bits", help="Weight bits per decoder layer span, "
                                           "e.g. '0-3:8,4-:4' (gptq-4bit, w4a16)."),
    bits: float | None = typer.Option(None, "--bits", help="Bits per weight of exl2 (2-8) or exl3 (1-8); "
                                      "default 4.0. The other targets fix theirs."),
) -> None:
    """Quantize a checkpoint (GGUF, GPTQ, AWQ, W4A16, FP8, W8A8, bnb, torchao, HQQ, EXL2/3) and register it."""
    from bench.quantize.run import ArtifactError, QuantizeError, quantize

    console = Console()
    try:
        with console.status(f"quantizing {model} to {to.value} ..."):
            result = quantize(model, to.value, registry, name=name, output_dir=output_dir, samples=samples,
                              keep_bf16=tuple(keep_bf16), layers_bits=layers_bits, bits=bits)
    except (ArtifactError, QuantizeError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"made {result.entry.name} ({result.entry.format}) in {result.seconds:.1f}s: {result.path}")
    backend = NATIVE_BACKEND.get(result.entry.format or "hf", "transformers")
    console.print(f"serve it: bench serve --backend {backend} --model {result.entry.name}")


def register(app: typer.Typer) -> None:
    """Add ``quantize``."""
    app.command("quantize")(quantize_command)
