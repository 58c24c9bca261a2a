"""Task registry: build the task object that an :class:`~bench.evals.config.EvalConfig` names."""

from __future__ import annotations

from typing import Any

from bench.evals.config import EvalConfig
from bench.evals.sandbox import SandboxInfo
from bench.evals.tasks.arc import ArcTask
from bench.evals.tasks.base import Task
from bench.evals.tasks.humaneval import HumanEvalTask
from bench.evals.tasks.math import MathAbsDiffTask
from bench.evals.tasks.squad import SquadTask


def build_task(config: EvalConfig, sandbox: SandboxInfo | None = None) -> Task[Any]:
    """The task for ``config``; HumanEval needs the probed ``sandbox``."""
    budget = config.generation_budget()
    if config.task == "math-absdiff":
        return MathAbsDiffTask(
            source=config.math_source, data=config.data, shots=config.shot_count(), api=config.api,
            max_tokens=budget,
        )
    if config.task in ("arc-challenge", "arc-easy"):
        subset = config.task.replace("-", "_")
        return ArcTask(
            subset=subset,
            mode=config.task_mode(),
            shots=config.shot_count(),
            api=config.api,
            max_tokens=budget,
            seed=config.seed,
        )
    if config.task == "squad":
        return SquadTask(shots=config.shot_count(), api=config.api, max_tokens=budget, seed=config.seed)
    if sandbox is None:
        raise ValueError("humaneval needs a sandbox (bench.evals.sandbox.probe_sandbox())")
    return HumanEvalTask(api=config.api, max_tokens=budget, timeout_s=config.code_timeout_s, sandbox=sandbox)
