"""``bench load``, ``bench sweep`` and ``bench summarize``. Flags are turned into one ``LoadConfig``."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from bench.metrics import LoadSummary


class Api(StrEnum):
    chat = "chat"
    completions = "completions"


class WorkloadKind(StrEnum):
    random = "random"
    shared_prefix = "shared-prefix"
    sharegpt = "sharegpt"
    jsonl = "jsonl"


class RateArrival(StrEnum):
    poisson = "poisson"
    constant = "constant"
    gamma = "gamma"


class SweepAxis(StrEnum):
    # bench.load.sweep.SweepMode, repeated so that this module imports nothing heavy (a test keeps them equal)
    rate = "rate"
    concurrency = "concurrency"


class Engine(StrEnum):
    native = "native"
    locust = "locust"


# Typer options shared by `load` and `sweep` (module-level constants, never mutated).
URL = typer.Option(..., "--url", help="server root or /v1 base, e.g. http://127.0.0.1:8000")
MODEL = typer.Option(..., "--model", help="model name sent in requests")
API = typer.Option(Api.chat, "--api")
WORKLOAD = typer.Option(WorkloadKind.random, "--workload")
INPUT = typer.Option(128, "--input-tokens", help="random: prompt tokens")
OUTPUT = typer.Option(None, "--output-tokens", help="output tokens (default 128; sharegpt: the reply length)")
PREFIX = typer.Option(512, "--prefix-tokens", help="shared-prefix: shared tokens")
SUFFIX = typer.Option(64, "--suffix-tokens", help="shared-prefix: unique tokens")
NPREFIX = typer.Option(1, "--num-prefixes", help="shared-prefix: distinct prefixes")
DATASET = typer.Option(None, "--dataset-path", help="sharegpt/jsonl file")
NUM = typer.Option(None, "--num-requests", help="measured requests (default 100 unless --duration)")
DURATION = typer.Option(None, "--duration", help="seconds; stop scheduling after this")
WARMUP = typer.Option(0, "--warmup", help="warm-up requests excluded from the summary")
SEED = typer.Option(0, "--seed")
TTFT = typer.Option(None, "--slo-ttft-ms")
TPOT = typer.Option(None, "--slo-tpot-ms")
E2E = typer.Option(None, "--slo-e2e-ms", help="judged from the scheduled send time")
TOKENIZER = typer.Option(None, "--tokenizer", help="path or models.yaml name (default <model>-hf, <model>)")
IGNORE_EOS = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="send ignore_eos and min_tokens")
LOGPROBS = typer.Option(False, "--logprobs-token-count", help="count tokens per chunk with logprobs")
WORKERS = typer.Option(1, "--workers", help="client processes")
SCRAPE = typer.Option(True, "--scrape/--no-scrape", help="sample /metrics and NVML")
API_KEY = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY",
                       help="bearer key (or OPENAI_API_KEY); never written to any output file")
REQUEST_TIMEOUT = typer.Option(None, "--request-timeout", min=0.001,
                               help="seconds a request may take, first send to end of stream, resends included "
                                    "(default 600); a request past it is recorded as timed out")
CONFIG = typer.Option(None, "--config", help="LoadConfig YAML; flags given override it")
PEAK_BW = typer.Option(None, "--gpu-peak-bandwidth-gbs", help="for MBU (default: table by GPU name)")
SERVER_GPUS = typer.Option(1, "--server-gpus", min=1, help="GPUs the server splits the model over (TP × PP), for MBU")


def workload_dict(
    kind: WorkloadKind,
    *,
    input_tokens: int,
    output_tokens: int | None,
    dataset_path: Path | None,
    prefix_tokens: int = 512,
    suffix_tokens: int = 64,
    num_prefixes: int = 1,
) -> dict[str, Any]:
    """The workload part of a LoadConfig from flags (the shared-prefix ones default as ``bench load``'s do)."""
    if kind is WorkloadKind.random:
        return {
            "kind": "random",
            "input_tokens": input_tokens,
            "output_tokens": output_tokens or 128,
        }
    if kind is WorkloadKind.shared_prefix:
        return {
            "kind": "shared-prefix",
            "prefix_tokens": prefix_tokens,
            "suffix_tokens": suffix_tokens,
            "output_tokens": output_tokens or 128,
            "num_prefixes": num_prefixes,
        }
    if kind is WorkloadKind.sharegpt:
        return {"kind": "sharegpt", "path": dataset_path, "output_tokens": output_tokens}
    if dataset_path is None:
        raise typer.BadParameter("--workload jsonl needs --dataset-path")
    return {"kind": "jsonl", "path": dataset_path, "output_tokens": output_tokens or 128}


def arrival_dict(
    concurrency: int | None, rate: float | None, kind: RateArrival, burstiness: float, max_conc: int | None
) -> dict[str, Any]:
    """The arrival part of a LoadConfig from flags (default: concurrency 1)."""
    if concurrency is not None and rate is not None:
        raise typer.BadParameter("give --concurrency or --rate, not both")
    if rate is None:
        return {"kind": "concurrency", "n": concurrency or 1}
    out: dict[str, Any] = {"kind": kind.value, "rate": rate, "max_concurrency": max_conc}
    if kind is RateArrival.gamma:
        out["burstiness"] = burstiness
    return out


def _read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a mapping of LoadConfig fields")
    return data


# LoadConfig field -> the flags it is built from. With --config, a field comes from the flags only where one
# of them was given; a flag left at its default does not override the file.
FIELD_FLAGS = MappingProxyType({
    "workload": ("workload", "input_tokens", "output_tokens", "prefix_tokens", "suffix_tokens", "num_prefixes",
                 "dataset_path"),
    "arrival": ("concurrency", "rate", "arrival", "burstiness", "max_concurrency"),
    "num_requests": ("num_requests", "duration"),
    "duration_s": ("duration",),
    "slo": ("slo_ttft_ms", "slo_tpot_ms", "slo_e2e_ms"),
    "force_output_len": ("ignore_eos",),
    "request_timeout_s": ("request_timeout",),
})


def merge_with_file(file_fields: dict[str, Any], flag_fields: dict[str, Any],
                    given: Callable[[str], bool]) -> dict[str, Any]:
    """The config file's fields, each overridden where the flags that make it were given (``given(param)``)."""
    merged = dict(file_fields)
    for field, value in flag_fields.items():
        if field not in file_fields or any(given(param) for param in FIELD_FLAGS.get(field, (field,))):
            merged[field] = value
    return merged


def _given_on_command_line(ctx: typer.Context) -> Callable[[str], bool]:
    """Whether a parameter was set by the user (command line or environment), not left at its default."""
    def given(param: str) -> bool:
        source = ctx.get_parameter_source(param)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    return given


def _slo(ttft: float | None, tpot: float | None, e2e: float | None) -> dict[str, float]:
    return {k: v for k, v in (("ttft_ms", ttft), ("tpot_ms", tpot), ("e2e_ms", e2e)) if v is not None}


def register(app: typer.Typer) -> None:
    """Add ``load``, ``sweep`` and ``summarize`` to the ``bench`` app."""
    app.command("load")(load_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("summarize")(summarize_cmd)


def load_cmd(
    ctx: typer.Context,
    url: str = URL,
    model: str = MODEL,
    api: Api = API,
    workload: WorkloadKind = WORKLOAD,
    input_tokens: int = INPUT,
    output_tokens: int | None = OUTPUT,
    prefix_tokens: int = PREFIX,
    suffix_tokens: int = SUFFIX,
    num_prefixes: int = NPREFIX,
    dataset_path: Path | None = DATASET,
    concurrency: int | None = typer.Option(None, "--concurrency", help="closed loop: N users"),
    rate: float | None = typer.Option(None, "--rate", help="open loop: requests/s"),
    arrival: RateArrival = typer.Option(RateArrival.poisson, "--arrival", help="with --rate"),
    burstiness: float = typer.Option(1.0, "--burstiness", help="gamma shape (1 = Poisson)"),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="cap in-flight with --rate"),
    num_requests: int | None = NUM,
    duration: float | None = DURATION,
    warmup: int = WARMUP,
    seed: int = SEED,
    slo_ttft_ms: float | None = TTFT,
    slo_tpot_ms: float | None = TPOT,
    slo_e2e_ms: float | None = E2E,
    tokenizer: str | None = TOKENIZER,
    ignore_eos: bool = IGNORE_EOS,
    logprobs_token_count: bool = LOGPROBS,
    workers: int = WORKERS,
    scrape: bool = SCRAPE,
    api_key: str | None = API_KEY,
    request_timeout: float | None = REQUEST_TIMEOUT,
    gpu_peak_bandwidth_gbs: float | None = PEAK_BW,
    server_gpus: int = SERVER_GPUS,
    config: Path | None = CONFIG,
    engine: Engine = typer.Option(
        Engine.native, "--engine", help="native (asyncio) or locust (subprocess; --workers N: master + N workers)"
    ),
    out: Path = typer.Option(Path("results/load"), "--out", help="output folder"),
) -> None:
    """Drive an OpenAI-compatible endpoint; write requests.jsonl and summary.json to --out."""
    from rich.console import Console

    from bench.load.config import LoadConfig
    from bench.load.runner import run_load

    fields: dict[str, Any] = {
        "url": url,
        "model": model,
        "api": api.value,
        "seed": seed,
        "warmup": warmup,
        "workload": workload_dict(
            workload,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            prefix_tokens=prefix_tokens,
            suffix_tokens=suffix_tokens,
            num_prefixes=num_prefixes,
            dataset_path=dataset_path,
        ),
        "arrival": arrival_dict(concurrency, rate, arrival, burstiness, max_concurrency),
        "num_requests": num_requests if num_requests is not None or duration is not None else 100,
        "duration_s": duration,
        "slo": _slo(slo_ttft_ms, slo_tpot_ms, slo_e2e_ms),
        "tokenizer": tokenizer,
        "force_output_len": ignore_eos,
        "logprobs_token_count": logprobs_token_count,
        "workers": workers,
        "scrape": scrape,
        "api_key": api_key,
        "gpu_peak_bandwidth_gbs": gpu_peak_bandwidth_gbs,
        "server_gpus": server_gpus,
    }
    if request_timeout is not None:
        fields["request_timeout_s"] = request_timeout
    cfg = LoadConfig.model_validate(merge_with_file(_read_yaml(config), fields, _given_on_command_line(ctx)))
    console = Console()
    if engine is Engine.locust:
        from bench.load.locust.engine import run_locust

        try:
            summary = run_locust(cfg, out, console)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    else:
        summary = run_load(cfg, out, console)
    console.print(f"records: {out / 'requests.jsonl'}  summary: {out / 'summary.json'}")
    fail_without_success(summary, console)


def fail_without_success(summary: LoadSummary, console: Console) -> None:
    """Exit with status 1 when no measured request succeeded: the run measured nothing."""
    if summary.num_ok > 0:
        return
    causes = "; ".join(f"{n} x {err}" for err, n in list(summary.errors.items())[:3]) or "no request was sent"
    console.print(f"[red]error:[/red] none of the {summary.num_requests} requests succeeded ({causes})")
    raise typer.Exit(1)


def summarize_cmd(
    run_dir: Path = typer.Argument(..., help="a bench load --out folder"),
    slo_ttft_ms: float | None = TTFT,
    slo_tpot_ms: float | None = TPOT,
    slo_e2e_ms: float | None = E2E,
) -> None:
    """Rebuild summary.json from requests.jsonl (e.g. after a killed run) and print it."""
    from rich.console import Console

    from bench.load.display import summary_table
    from bench.load.runner import rebuild_summary
    from bench.metrics import SLO

    slo = _slo(slo_ttft_ms, slo_tpot_ms, slo_e2e_ms)
    summary = rebuild_summary(run_dir, SLO(**slo) if slo else None)
    Console().print(summary_table(summary, f"bench summarize {run_dir}"))


def sweep_cmd(
    url: str = URL,
    model: str = MODEL,
    api: Api = API,
    workload: WorkloadKind = WORKLOAD,
    input_tokens: int = INPUT,
    output_tokens: int | None = OUTPUT,
    dataset_path: Path | None = DATASET,
    mode: SweepAxis = typer.Option(SweepAxis.rate, "--mode", help="rate (Poisson) or concurrency"),
    start: float = typer.Option(1.0, "--start"),
    factor: float = typer.Option(2.0, "--factor"),
    max_value: float = typer.Option(1024.0, "--max"),
    refine: int = typer.Option(2, "--refine"),
    goodput_target: float = typer.Option(0.9, "--goodput-target", help="fraction meeting all SLOs"),
    saturation_ratio: float = typer.Option(
        0.8, "--saturation-ratio", help="rate mode: saturated when sustained < ratio x offered"
    ),
    max_concurrency: int | None = typer.Option(
        None, "--max-concurrency", help="rate mode: cap in-flight requests at every step"
    ),
    num_requests: int = typer.Option(100, "--num-requests", help="per step"),
    warmup: int = WARMUP,
    seed: int = SEED,
    slo_ttft_ms: float | None = TTFT,
    slo_tpot_ms: float | None = TPOT,
    slo_e2e_ms: float | None = E2E,
    tokenizer: str | None = TOKENIZER,
    workers: int = WORKERS,
    api_key: str | None = API_KEY,
    request_timeout: float | None = REQUEST_TIMEOUT,
    out: Path = typer.Option(Path("results/sweep"), "--out"),
) -> None:
    """Find the highest rate or concurrency meeting the SLOs; writes sweep.json and sweep.png."""
    from rich.console import Console
    from rich.table import Table

    from bench.load.config import LoadConfig
    from bench.load.sweep import SweepSpec, run_sweep, sweep_rows

    slo = _slo(slo_ttft_ms, slo_tpot_ms, slo_e2e_ms)
    if not slo:
        raise typer.BadParameter("a sweep needs at least one of --slo-ttft-ms, --slo-tpot-ms, --slo-e2e-ms")
    timeout = {} if request_timeout is None else {"request_timeout_s": request_timeout}
    base = LoadConfig.model_validate(
        {
            **timeout,
            "url": url,
            "model": model,
            "api": api.value,
            "seed": seed,
            "warmup": warmup,
            "slo": slo,
            "num_requests": num_requests,
            "tokenizer": tokenizer,
            "workers": workers,
            "api_key": api_key,
            "arrival": {"kind": "poisson", "rate": 1.0, "max_concurrency": max_concurrency},
            "workload": workload_dict(
                workload, input_tokens=input_tokens, output_tokens=output_tokens, dataset_path=dataset_path
            ),
        }
    )
    spec = SweepSpec.model_validate(
        {
            "mode": mode.value,
            "start": start,
            "factor": factor,
            "max_value": max_value,
            "refine_steps": refine,
            "goodput_target": goodput_target,
            "saturation_ratio": saturation_ratio,
        }
    )
    console = Console()
    result = run_sweep(base, spec, out, console)
    table = Table(title=f"bench sweep ({mode.value}); best = {result.best}")
    rows = sweep_rows(result)
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(f"curve: {out / 'sweep.json'}  plot: {out / 'sweep.png'}")
