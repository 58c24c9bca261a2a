"""``bench load``, ``bench sweep`` and ``bench summarize``: flags generated from ``LoadConfig`` and its parts.

Every option is declared once, as a field of :class:`~bench.load.config.LoadConfig`, its workload and arrival
models, :class:`~bench.metrics.SLO` or :class:`~bench.load.sweep.SweepSpec` (:mod:`bench.flags` makes the
flags). A flag that is not given leaves the field to ``--config``'s file, then to the model's default.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

from bench.flags import Flag, command, deep_merge, flag, kind_flag, model_flags
from bench.load.arrivals import Arrival, ConcurrencyArrival, GammaArrival, PoissonArrival, ScheduleArrival
from bench.load.autoworkers import AUTO, AUTO_FILE
from bench.load.config import LoadConfig, RepeatSpec, SweepSpec
from bench.load.workloads import (
    MultiTurnWorkload,
    RandomWorkload,
    SharedPrefixWorkload,
    ShareGPTWorkload,
    TraceWorkload,
    Workload,
)
from bench.metrics import SLO

if TYPE_CHECKING:
    from rich.console import Console

    from bench.load.repeats import RunOne
    from bench.metrics import LoadSummary

OPEN_LOOP = ("poisson", "constant", "gamma")


class Engine(StrEnum):
    native = "native"
    locust = "locust"


def _config_flags(names: list[str]) -> list[Flag]:
    """``LoadConfig`` flags; the few whose flag name differs from the field keep their old names."""
    renamed = {"duration_s": "duration", "force_output_len": "ignore_eos", "request_timeout_s": "request_timeout",
               "window_s": "window"}
    flags = model_flags(LoadConfig, [n for n in names if n != "api_key"], params=renamed)
    if "api_key" in names:
        flags.append(flag(LoadConfig, "api_key", envvar="OPENAI_API_KEY",
                          help="bearer key (or OPENAI_API_KEY); never written to any output file"))
    return flags


def _workload_flags(shared_prefix: bool) -> list[Flag]:
    at = ("workload",)
    flags = [kind_flag(Workload, "workload", at, default="random"),
             *model_flags(RandomWorkload, ["input_tokens", "output_tokens"], prefix=at),
             flag(ShareGPTWorkload, "path", param="dataset_path", path=(*at, "path"), help="sharegpt/jsonl file")]
    if shared_prefix:
        flags += model_flags(SharedPrefixWorkload, ["prefix_tokens", "suffix_tokens", "num_prefixes"], prefix=at)
        flags += [flag(TraceWorkload, "path", param="trace", path=(*at, "path"),
                       help="trace file to replay (with --workload trace)"),
                  *model_flags(TraceWorkload, ["format", "time_scale", "max_duration_s", "block_tokens"], prefix=at,
                               params={"format": "trace_format", "max_duration_s": "max_duration",
                                       "block_tokens": "trace_block_tokens"})]
        flags += model_flags(MultiTurnWorkload, ["source", "turns", "user_tokens", "think_time_s", "think",
                                                 "max_context_tokens"], prefix=at,
                             params={"source": "conversation_source", "think_time_s": "think_time",
                                     "max_context_tokens": "max_context"})
    return flags


def _slo_flags() -> list[Flag]:
    return model_flags(SLO, list(SLO.model_fields), prefix=("slo",), params={n: f"slo_{n}" for n in SLO.model_fields})


WORKERS_HELP = (f"{LoadConfig.model_fields['workers'].description}, or auto: probe the target load with 1, 2, 4, ... "
                "workers (up to the cores) and take the first whose client kept up (workers_auto.json says why)")
WORKERS = Flag(("workers",), "workers", str | None,
               typer.Option(None, "--workers", help=WORKERS_HELP, show_default="1"))
MAX_CONCURRENCY = flag(PoissonArrival, "max_concurrency", path=("arrival", "max_concurrency"),
                       help="cap in-flight requests (with --rate, --rate-schedule or a trace; sweep: at every step)")
LOAD_FLAGS = [
    *_config_flags(["url", "model", "api", "num_requests", "duration_s", "warmup", "seed", "tokenizer",
                    "force_output_len", "logprobs_token_count", "scrape", "api_key", "request_timeout_s",
                    "gpu_peak_bandwidth_gbs", "server_gpus", "window_s"]),
    WORKERS,
    *_workload_flags(shared_prefix=True),
    flag(ConcurrencyArrival, "n", param="concurrency", path=("arrival", "n"), help="closed loop: N users"),
    flag(PoissonArrival, "rate", path=("arrival", "rate"), help="open loop: requests/s"),
    kind_flag(Arrival, "arrival", ("arrival",), kinds=OPEN_LOOP, default="poisson", help="with --rate"),
    flag(GammaArrival, "burstiness", path=("arrival", "burstiness")),
    MAX_CONCURRENCY,
    Flag(("arrival", "schedule"), "rate_schedule", str | None,
         typer.Option(None, "--rate-schedule", help="open loop at a rate that changes: AT:RATE,... in seconds and "
                      "requests/s, steps (0:5,60:20,120:40) or a linear ramp (ramp:0:5,120:40); the last rate holds "
                      "until --duration or --num-requests ends the run")),
    flag(ScheduleArrival, "process", param="schedule_process", path=("arrival", "process")),
    *_slo_flags(),
    *model_flags(RepeatSpec, list(RepeatSpec.model_fields), prefix=("repeat",)),
]
SWEEP_FLAGS = [
    *_config_flags(["url", "model", "api", "num_requests", "warmup", "seed", "tokenizer", "workers", "api_key",
                    "request_timeout_s"]),
    *_workload_flags(shared_prefix=False),
    MAX_CONCURRENCY,
    *_slo_flags(),
    *model_flags(SweepSpec, list(SweepSpec.model_fields), prefix=("sweep",),
                 params={"max_value": "max", "refine_steps": "refine"}),
    *model_flags(RepeatSpec, list(RepeatSpec.model_fields), prefix=("repeat",)),
]


def register(app: typer.Typer) -> None:
    """Add ``load``, ``sweep`` and ``summarize`` to the ``bench`` app."""
    app.command("load")(load_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("summarize")(summarize_cmd)


def load_config(fields: dict[str, Any], file_fields: dict[str, Any] | None = None) -> LoadConfig:
    """The ``LoadConfig`` of the given flags (``fields``) laid over a config file's fields."""
    file_fields = file_fields or {}
    if "duration_s" in fields and "num_requests" not in fields:
        fields = {**fields, "num_requests": None}  # --duration alone bounds the run
    fields = {**fields, **_kinds(fields, file_fields)}
    try:
        return LoadConfig.model_validate(deep_merge(file_fields, fields))
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None


def take_workers(fields: dict[str, Any]) -> bool:
    """Whether ``--workers auto`` was given (then removed from ``fields``); a number is checked and kept."""
    value = fields.get("workers")
    if value is None:
        return False
    if str(value).strip().lower() == AUTO:
        del fields["workers"]
        return True
    try:
        fields["workers"] = int(value)
    except ValueError:
        raise typer.BadParameter(f"--workers takes a number or {AUTO}, not {value!r}") from None
    return False


def _auto_workers(cfg: LoadConfig, out: Path, console: Console) -> LoadConfig:
    """``--workers auto``: probe, print the choice and why, and return ``cfg`` with the chosen count."""
    from bench.load.autoworkers import choose_workers
    from bench.load.runner import run_load

    choice = choose_workers(cfg, out, run_load, console)
    console.print(f"[bold]--workers auto[/bold] chose {choice.why} (probes: "
                  f"{', '.join(f'{p.workers}={_verdict(p.behind)}' for p in choice.probes)}; {out / AUTO_FILE})")
    return cfg.model_copy(update={"workers": choice.chosen})


def _verdict(behind: bool | None) -> str:
    return "?" if behind is None else ("behind" if behind else "ok")


def _kinds(fields: dict[str, Any], file_fields: dict[str, Any]) -> dict[str, Any]:
    """The workload and arrival given, each with its ``kind`` (the file's, else the flags' default)."""
    out: dict[str, Any] = {}
    workload, arrival = fields.get("workload"), dict(fields.get("arrival", {}))
    if workload:
        out["workload"] = {"kind": (file_fields.get("workload") or {}).get("kind", "random"), **workload}
    if sum(key in arrival for key in ("n", "rate", "schedule")) > 1:
        raise typer.BadParameter("--concurrency, --rate and --rate-schedule exclude each other: give one, not both")
    if "n" in arrival:
        out["arrival"] = {"kind": "concurrency", **arrival}
    elif "schedule" in arrival:
        out["arrival"] = {"kind": "schedule", **arrival}
    elif arrival and "rate" not in arrival and _workload_kind(fields, file_fields) == "trace":
        out["arrival"] = {"kind": "trace", **arrival}  # --max-concurrency over a trace's own times
    elif arrival:
        file_kind = (file_fields.get("arrival") or {}).get("kind")
        out["arrival"] = {"kind": file_kind if file_kind in OPEN_LOOP else "poisson", **arrival}
    return out


def _workload_kind(fields: dict[str, Any], file_fields: dict[str, Any]) -> str | None:
    return str((fields.get("workload") or {}).get("kind") or (file_fields.get("workload") or {}).get("kind") or "")


def _read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a mapping of LoadConfig fields")
    return data


@command(LOAD_FLAGS)
def load_cmd(
    fields: dict[str, Any],
    config: Path | None = typer.Option(None, "--config", help="LoadConfig YAML; flags given override it"),
    engine: Engine = typer.Option(
        Engine.native, "--engine", help="native (asyncio) or locust (subprocess; --workers N: master + N workers)"
    ),
    out: Path = typer.Option(Path("results/load"), "--out", help="output folder"),
) -> None:
    """Drive an OpenAI-compatible endpoint; write requests.jsonl and summary.json to --out.

    With --repeats N, each run goes to its own folder under --out, and repeats.json holds the spread.
    """
    from rich.console import Console

    from bench.load.runner import run_load

    try:
        repeat = RepeatSpec.model_validate(fields.pop("repeat", {}))
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    auto = take_workers(fields)
    if auto and engine is Engine.locust:
        raise typer.BadParameter("--workers auto probes the native client's health; give --engine locust a number")
    cfg = load_config(fields, _read_yaml(config))
    console = Console()
    run_one = _locust_run if engine is Engine.locust else run_load
    if auto:
        cfg = _auto_workers(cfg, out, console)
    if repeat.repeating:
        _load_repeats(cfg, repeat, out, run_one, console)
        return
    summary = run_one(cfg, out, console)
    console.print(f"records: {out / 'requests.jsonl'}  summary: {out / 'summary.json'}")
    fail_without_success(summary, console)


def _locust_run(cfg: LoadConfig, out: Path, console: Console | None) -> LoadSummary:
    """One run through locust (a config locust cannot run is a bad parameter)."""
    from bench.load.locust.engine import run_locust

    try:
        return run_locust(cfg, out, console)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _load_repeats(cfg: LoadConfig, repeat: RepeatSpec, out: Path, run_one: RunOne, console: Console) -> None:
    """``--repeats``: the warm-up runs, the measured runs, the spread table; status 1 when a run measured nothing."""
    from bench.load.display import spread_table
    from bench.load.repeats import run_repeats

    result = run_repeats(cfg, repeat, out, run_one, console)
    warm = [s.output_throughput_tok_s for s in result.warmup]
    console.print(spread_table(result.spread, f"bench load: {result.repeats} runs of {cfg.arrival.describe()}", warm))
    if result.client_behind:
        console.print(f"[yellow]warning:[/yellow] the client fell behind in {result.client_behind} of "
                      f"{result.repeats} runs (see each run's summary)")  # fmt: skip
    console.print(f"runs: {out}/repeat-*  spread: {out / 'repeats.json'}")
    for summary in result.runs:
        fail_without_success(summary, console)


def fail_without_success(summary: LoadSummary, console: Console) -> None:
    """Exit with status 1 when no measured request succeeded: the run measured nothing."""
    if summary.num_ok > 0:
        return
    causes = "; ".join(f"{n} x {err}" for err, n in list(summary.errors.items())[:3]) or "no request was sent"
    console.print(f"[red]error:[/red] none of the {summary.num_requests} requests succeeded ({causes})")
    raise typer.Exit(1)


@command(_slo_flags())
def summarize_cmd(fields: dict[str, Any], run_dir: Path = typer.Argument(..., help="a bench load --out folder"),
                  ) -> None:
    """Rebuild summary.json (and timeseries.json) from requests.jsonl (e.g. after a killed run) and print it."""
    from rich.console import Console

    from bench.load.display import summary_table
    from bench.load.runner import SavedConfigError, rebuild_summary, rebuild_time_series

    slo = SLO(**fields["slo"]) if "slo" in fields else None
    try:
        summary = rebuild_summary(run_dir, slo)
    except SavedConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    rebuild_time_series(run_dir, slo)
    Console().print(summary_table(summary, f"bench summarize {run_dir}"))


@command(SWEEP_FLAGS)
def sweep_cmd(fields: dict[str, Any], out: Path = typer.Option(Path("results/sweep"), "--out")) -> None:
    """Find the highest rate or concurrency meeting the SLOs; writes sweep.json and sweep.png.

    With --repeats N every step runs N times and keeps its spread. Exit status 3 when the client fell behind
    at any step (its latencies there include the client's own lag), 1 when no step measured anything.
    """
    from rich.console import Console
    from rich.table import Table

    from bench.load.sweep import run_sweep, sweep_rows

    if not fields.get("slo"):
        raise typer.BadParameter("a sweep needs at least one of --slo-ttft-ms, --slo-tpot-ms, --slo-e2e-ms")
    try:
        spec = SweepSpec.model_validate(fields.pop("sweep", {}))
        repeat = RepeatSpec.model_validate(fields.pop("repeat", {}))
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    arrival = {"kind": "poisson", "rate": 1.0, **fields.pop("arrival", {})}
    base = load_config({**fields, "arrival": arrival})
    console = Console()
    result = run_sweep(base, spec, out, console, repeat)
    table = Table(title=f"bench sweep ({spec.mode.value}); best = {result.best}")
    rows = sweep_rows(result)
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(f"curve: {out / 'sweep.json'}  plot: {out / 'sweep.png'}")
    if result.points and all(point.summary.num_ok == 0 for point in result.points):
        fail_without_success(result.points[0].summary, console)  # no step measured anything
    fail_when_behind(result.behind_steps, spec.mode.value, base.workers, console)


def fail_when_behind(steps: list[float], mode: str, workers: int, console: Console) -> None:
    """Exit with :data:`~bench.load.sweep.CLIENT_BEHIND_EXIT` naming the steps whose client fell behind."""
    from bench.load.sweep import CLIENT_BEHIND_EXIT

    if not steps:
        return
    named = ", ".join(f"{mode} {v:g}" for v in steps)
    console.print(f"[red]error:[/red] the client fell behind at {named}: those steps' latencies include its own "
                  f"lag. Rerun with more client processes (--workers {2 * workers}), or let "
                  f"`bench load --workers auto` find the count at the highest of those loads")  # fmt: skip
    raise typer.Exit(CLIENT_BEHIND_EXIT)
