"""The matrix file: one pydantic schema validates ``bench run MATRIX.yaml`` and the built-in default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends.base import EngineOptions
from bench.evals.config import TaskName
from bench.load.workloads import RandomWorkload, Workload
from bench.metrics import SLO


class LoadPoint(BaseModel):
    """One load level: a fixed concurrency or a request rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0, description="requests/s, Poisson arrivals")

    @model_validator(mode="after")
    def _one(self) -> LoadPoint:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency or rate")
        return self

    @property
    def label(self) -> str:
        """``c8`` or ``r2.5``."""
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"


class LoadScenario(BaseModel):
    """Fixed load points with one workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["load"] = "load"
    name: str = "load"
    api: Literal["chat", "completions"] = "completions"
    workload: Workload = Field(default_factory=lambda: RandomWorkload(input_tokens=64, output_tokens=32))
    points: tuple[LoadPoint, ...] = (LoadPoint(concurrency=1), LoadPoint(concurrency=8))
    requests_per_point: int = Field(default=16, ge=1)
    warmup: int = Field(default=1, ge=0)
    duration_s: float | None = Field(default=300.0, gt=0, description="upper bound per point")
    slo: SLO = Field(default_factory=SLO)


class EvalScenario(BaseModel):
    """A quality task through the same endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["eval"] = "eval"
    name: str = "eval"
    task: TaskName
    limit: int = Field(default=20, ge=1)
    shots: int = Field(default=0, ge=0)
    api: Literal["chat", "completion"] = "completion"
    mode: Literal["generate", "loglikelihood"] = "generate"
    concurrency: int = Field(default=4, ge=1)


Scenario = Annotated[LoadScenario | EvalScenario, Field(discriminator="kind")]


class OptionSet(BaseModel):
    """A named set of engine options (``name`` appears in the report)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    options: EngineOptions = Field(default_factory=EngineOptions)


class Matrix(BaseModel):
    """models × backends × option sets × scenarios, repeated over seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "matrix"
    models: tuple[str, ...] = Field(min_length=1)
    backends: tuple[str, ...] = Field(min_length=1)
    option_sets: tuple[OptionSet, ...] = (OptionSet(),)
    scenarios: tuple[Scenario, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = (0,)
    gpu_hour_usd: float | None = Field(default=None, ge=0, description="price for cost per 1M output tokens")
    server_timeout_s: float = Field(default=600.0, gt=0, description="how long a server may take to start")
    native_variants: bool = Field(
        default=False,
        description="serve each backend the variant of each model (itself or an entry derived from it) "
        "in the format that backend prefers, e.g. HF for transformers and GGUF for llama.cpp",
    )


class MatrixError(ValueError):
    """A matrix file is invalid."""


def load_matrix(path: Path) -> Matrix:
    """Read and validate a matrix YAML file; errors name the offending key."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MatrixError(f"matrix file {path} not found") from None
    except yaml.YAMLError as exc:
        raise MatrixError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path} is invalid:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  unknown key {where!r}" if err["type"] == "extra_forbidden" else f"  {where}: {err['msg']}")
        raise MatrixError("\n".join(lines)) from None
