"""``bench load --repeats N``: run one load point N times (after warm-up runs) and report the spread.

Run ``i`` of ``N`` uses ``seed + i``, so each has its own prompts (the random workloads' markers carry the
seed: nothing is served from a prefix cache a previous run filled) and its own timetable; warm-up run ``k``
uses ``seed + N + k``. Each run is a normal ``bench load`` run in its own folder (``warmup-<k>``,
``repeat-<i>``); ``repeats.json`` holds every summary and the spreads (:mod:`bench.metrics.spread`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import Console

from bench.load.config import LoadConfig, RepeatSpec
from bench.metrics import LoadSummary
from bench.metrics.spread import Spread, repeat_spreads

RunOne = Callable[[LoadConfig, Path, Console | None], LoadSummary]


class RepeatResult(BaseModel):
    """Every run of a repeated load point and the spread of its figures over the measured runs."""

    repeats: int
    warmup_runs: int
    warmup: list[LoadSummary] = Field(default_factory=list, description="warm-up runs, left out of the spread")
    runs: list[LoadSummary]
    spread: dict[str, Spread]
    client_behind: int = Field(description="measured runs whose client fell behind")


def run_repeats(base: LoadConfig, spec: RepeatSpec, out: Path, run_one: RunOne,
                console: Console | None = None) -> RepeatResult:
    """The warm-up runs, then ``spec.repeats`` measured runs; writes ``repeats.json`` and returns it all."""
    out.mkdir(parents=True, exist_ok=True)
    warm = [_one(base, base.seed + spec.repeats + k, out / f"warmup-{k}", run_one, console)
            for k in range(spec.warmups())]  # fmt: skip
    runs = [_one(base, base.seed + i, out / f"repeat-{i}", run_one, console) for i in range(spec.repeats)]
    result = RepeatResult(
        repeats=spec.repeats, warmup_runs=len(warm), warmup=warm, runs=runs, spread=repeat_spreads(runs),
        client_behind=sum(1 for s in runs if s.client is not None and s.client.behind),
    )  # fmt: skip
    (out / "repeats.json").write_text(result.model_dump_json(indent=2) + "\n")
    return result


def _one(base: LoadConfig, seed: int, out: Path, run_one: RunOne, console: Console | None) -> LoadSummary:
    if console is not None:
        console.print(f"[bold]{out.name}[/bold] (seed {seed})")
    return run_one(base.model_copy(update={"seed": seed}), out, console)


def read_repeats(path: Path) -> RepeatResult:
    """A ``repeats.json`` (or the folder holding it), validated."""
    path = path / "repeats.json" if path.is_dir() else path
    return RepeatResult.model_validate(json.loads(path.read_text()))
