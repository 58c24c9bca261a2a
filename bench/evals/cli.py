"""``bench eval``: run one quality task through an OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path

import typer

_TASK_HELP = "math-absdiff | arc-challenge | arc-easy | squad | humaneval"


def register(app: typer.Typer) -> None:
    """Add ``bench eval`` to the CLI."""
    app.command("eval")(eval_command)


def eval_command(
    url: str = typer.Option(..., help="endpoint root or its /v1 base, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., help="model name to send in requests"),
    task: str = typer.Option(..., help=_TASK_HELP),
    out: Path = typer.Option(..., "--out", help="folder for samples.jsonl and eval_summary.json"),
    limit: int = typer.Option(50, min=1, help="documents to evaluate (a seeded sample)"),
    seed: int = typer.Option(0, help="sampling and few-shot seed"),
    shots: int | None = typer.Option(None, min=0, help="few-shot examples per prompt (default: 5 for ARC "
                                      "generate in completion mode, else 0)"),
    chat: bool = typer.Option(False, "--chat/--completion", help="chat completions or plain completions"),
    mode: str = typer.Option("auto", help="ARC only: auto (loglikelihood where the endpoint returns prompt "
                             "logprobs, else generate) | generate | loglikelihood"),
    concurrency: int = typer.Option(4, min=1, help="requests in flight at once"),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", help="bearer token for the endpoint"),
    max_tokens: int | None = typer.Option(None, min=1, help="generation budget (default: per task)"),
    stream: bool = typer.Option(False, help="stream replies to measure TTFT too"),
    math_source: str = typer.Option("gsm8k", help="math-absdiff: gsm8k | math500"),
    data: Path | None = typer.Option(None, help="math-absdiff: JSONL with problem, expected_answer"),
    allow_code_execution: bool = typer.Option(False, help="humaneval: run generated code (sandboxed)"),
    allow_weak_sandbox: bool = typer.Option(
        False, help="humaneval: run the code even where the isolated sandbox (namespaces, private root) cannot "
        "be had: only rlimits, a private temp folder and a timeout"
    ),
    max_duration_s: float = typer.Option(3600.0, help="stop the whole eval after this many seconds"),
) -> None:
    """Score a model on a task through its OpenAI endpoint; write per-sample JSONL and a summary."""
    from pydantic import ValidationError

    from bench.evals.config import EvalConfig
    from bench.evals.runner import EndpointDeadError, EvalSetupError, run_eval

    try:
        config = EvalConfig.model_validate(
            {
                "url": url, "model": model, "task": task, "limit": limit, "seed": seed, "shots": shots,
                "api": "chat" if chat else "completion", "mode": mode, "concurrency": concurrency,
                "api_key": api_key, "max_tokens": max_tokens, "stream": stream, "math_source": math_source,
                "data": data, "allow_code_execution": allow_code_execution, "max_duration_s": max_duration_s,
                "allow_weak_sandbox": allow_weak_sandbox,
            }
        )
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
