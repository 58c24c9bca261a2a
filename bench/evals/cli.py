"""``bench eval``: run one quality task through an OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bench.evals.config import EvalConfig
from bench.flags import command, flag, model_flags

# bench eval's flags, generated from EvalConfig (each option declared once, with its help and default); the API
# is chosen with --chat/--completion below.
EVAL_FLAGS = [
    *model_flags(EvalConfig, ["url", "model", "task"]),
    *model_flags(EvalConfig, ["limit", "seed", "shots", "mode", "concurrency"]),
    flag(EvalConfig, "api_key", envvar="OPENAI_API_KEY"),
    *model_flags(EvalConfig, ["max_tokens", "stream", "math_source", "data", "allow_code_execution",
                              "allow_weak_sandbox", "max_duration_s"]),
]


def register(app: typer.Typer) -> None:
    """Add ``bench eval`` to the CLI."""
    app.command("eval")(eval_command)


@command(EVAL_FLAGS)
def eval_command(
    fields: dict[str, Any],
    out: Path = typer.Option(..., "--out", help="folder for samples.jsonl and eval_summary.json"),
    chat: bool = typer.Option(False, "--chat/--completion", help="chat completions or plain completions"),
) -> None:
    """Score a model on a task through its OpenAI endpoint; write per-sample JSONL and a summary."""
    from pydantic import ValidationError

    from bench.evals.runner import EndpointDeadError, EvalSetupError, run_eval

    try:
        config = EvalConfig.model_validate({**fields, "api": "chat" if chat else "completions"})
        summary = run_eval(config, out)
    except (ValidationError, EvalSetupError) as exc:
        typer.echo(f"bench eval: {exc}", err=True)
        raise typer.Exit(2) from exc
    except EndpointDeadError as exc:
        typer.echo(f"bench eval: stopped: {exc}", err=True)
        raise typer.Exit(1) from exc
    ci = f" (95% CI {summary.ci95[0]:.4g}..{summary.ci95[1]:.4g})" if summary.ci95 else ""
    value = "n/a" if summary.value is None else f"{summary.value:.4g}"
    better = "higher" if summary.higher_is_better else "lower"
    typer.echo(f"{summary.task}: {summary.metric} = {value}{ci}, {better} is better")
    others = ", ".join(f"{k}={v:.4g}" for k, v in summary.metrics.items() if v is not None)
    typer.echo(f"  {others}; n={summary.n_samples}, errors={summary.n_errors}")
    if summary.mode_note:
        typer.echo(f"  mode {summary.mode_note}")
    if summary.no_answer_rate is not None:
        flag = "  FLAGGED: over 20%, the score says more about the prompt than the model"
        flag = flag if summary.no_answer_flag else ""
        typer.echo(f"  no extractable answer: {summary.no_answer_rate:.0%} of samples{flag}")
    e2e = summary.latency.e2e_s
    if e2e:
        requests = summary.latency.requests
        typer.echo(f"  e2e latency p50={e2e['p50']:.3f}s p90={e2e['p90']:.3f}s over {requests} requests")
    typer.echo(f"  wrote {out / 'samples.jsonl'} and {out / 'eval_summary.json'}")
