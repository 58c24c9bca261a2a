"""Typed settings of one ``bench train`` run (the CLI flags map 1:1 onto :class:`TrainSpec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["full", "lora", "dora", "vera", "qlora", "qat"]
METHODS: tuple[str, ...] = ("full", "lora", "dora", "vera", "qlora", "qat")
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
# Every linear layer of a Llama-style block (SmolLM2 is one).
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Learning rates that move a small model within a few steps; full/QAT update every weight, so lower.
DEFAULT_LR: dict[str, float] = {"full": 2e-5, "qat": 2e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4,
                                "vera": 4e-3}
# VeRA's frozen random projections need a high rank (the paper uses 256); the others use 16.
DEFAULT_RANK: dict[str, int] = {"vera": 256}


class TrainSpec(BaseModel):
    """How to fine-tune ``model`` on ``data``; ``None`` fields take the method's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    model: str
    data: Path
    rank: int | None = Field(default=None, gt=0)
    alpha: int | None = Field(default=None, gt=0)
    target_modules: tuple[str, ...] = LLAMA_LINEARS
    learning_rate: float | None = Field(default=None, gt=0)
    scheduler: Scheduler = "linear"
    warmup_steps: int = Field(default=0, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=4, gt=0)
    max_length: int = Field(default=512, gt=8)
    seed: int = 0
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output_dir: Path | None = None

    def lr(self) -> float:
        """The learning rate to use."""
        return self.learning_rate or DEFAULT_LR[self.method]

    def lora_rank(self) -> int:
        """Adapter rank (peft's ``r``)."""
        return self.rank or DEFAULT_RANK.get(self.method, 16)

    def lora_alpha(self) -> int:
        """Adapter scaling numerator (``alpha / r`` scales the update); defaults to twice the rank."""
        return self.alpha or 2 * self.lora_rank()

    def entry_name(self) -> str:
        """Name of the models.yaml entry to write."""
        return self.name or f"{self.model}-{self.method}"
