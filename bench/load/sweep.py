"""``bench sweep``: find the highest request rate (or concurrency) that meets the SLOs.

Steps grow geometrically from ``start`` until a step fails: it misses the SLO target or it is
over-saturated. Then the sweep bisects between the last passing and the first failing step. Every
step is a normal ``bench load`` run in its own folder; the curve goes to ``sweep.json`` and
``sweep.png``.

Saturation is judged over the sending window, never over a duration that includes the last
requests' latency (which biases short runs low):

- rate: the sustained rate (offered rate / slope of completion time against scheduled time, see
  :func:`bench.metrics.sustained_rate`) is below ``saturation_ratio`` of the realised offered rate;
  a queue that grows in the client (``max_concurrency``) or in the server makes completions fall
  behind the schedule;
- concurrency: the completion rate (:func:`bench.metrics.offered_rate`, which in a closed loop is
  the rate of sends after the first instant) grew by less than 5% over the previous step.

A saturated step never passes, whatever its SLOs say.

With ``--repeats N`` (:mod:`bench.load.repeats`) every step runs N times after its warm-up runs, in
``<step>/repeat-<i>``; the step keeps the spread of its figures and is judged on its median run by output
throughput. A step whose client fell behind in any run is named in ``behind_steps``, and ``bench sweep``
exits with :data:`CLIENT_BEHIND_EXIT`: its latencies include the client's own lag.
"""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import Console

from bench.load.arrivals import ConcurrencyArrival, PoissonArrival
from bench.load.config import LoadConfig, RepeatSpec, SweepMode, SweepSpec
from bench.load.repeats import run_repeats
from bench.load.runner import Prepared, run_load
from bench.metrics import LoadSummary
from bench.metrics.spread import Spread

# In concurrency mode, a step whose completion rate grew by less than this factor is saturated.
CONCURRENCY_GAIN = 1.05
# ``bench sweep``'s exit status when the client fell behind at any step (1: no step measured anything; 2: usage).
CLIENT_BEHIND_EXIT = 3


class SweepPoint(BaseModel):
    """One step of the sweep: ``passed`` means the SLO target was met and it was not saturated."""

    value: float
    passed: bool
    saturated: bool
    slo_met: bool | None = None
    summary: LoadSummary = Field(description="the step's run (with --repeats, its median run by output tok/s)")
    repeats: int = 1
    spread: dict[str, Spread] | None = Field(default=None, description="--repeats: spread over the measured runs")
    runs_behind: int = Field(default=0, description="measured runs whose client fell behind")

    @property
    def client_behind(self) -> bool:
        """Whether the client fell behind in any measured run of this step."""
        return self.runs_behind > 0 or (self.summary.client is not None and self.summary.client.behind)


class SweepResult(BaseModel):
    """The curve and the answer."""

    mode: str
    best: float | None
    points: list[SweepPoint]
    behind_steps: list[float] = Field(default_factory=list, description="steps whose client fell behind")


def step_seed(seed: int, label: str) -> int:
    """A load point's own seed, from its run's seed and its label (a sweep step's ``concurrency-8``, a ``bench run``
    point's folder name): every point draws other prompts, so a server's prefix cache cannot serve a later point
    from an earlier one's."""
    return seed * 1_000_003 + zlib.crc32(label.encode())


def _config_at(base: LoadConfig, spec: SweepSpec, value: float) -> LoadConfig:
    """The base config at one step, with the step's seed; a rate step keeps the base arrival's
    ``max_concurrency``."""
    if spec.mode is SweepMode.concurrency:
        arrival: ConcurrencyArrival | PoissonArrival = ConcurrencyArrival(n=max(1, round(value)))
    else:
        cap = None if base.arrival.closed_loop else base.arrival.in_flight_limit
        arrival = PoissonArrival(rate=value, max_concurrency=cap)
    return base.model_copy(update={"arrival": arrival, "seed": step_seed(base.seed, f"{spec.mode}-{value:g}")})


def slo_met(summary: LoadSummary, spec: SweepSpec) -> bool:
    """At least one success and the goodput fraction at the target (pure)."""
    frac = summary.goodput_fraction if summary.goodput_fraction is not None else 1.0
    return summary.num_ok > 0 and frac >= spec.goodput_target


def is_saturated(summary: LoadSummary, spec: SweepSpec, previous: LoadSummary | None) -> bool:
    """Over-saturation over the sending window (see the module docstring); pure."""
    if spec.mode is SweepMode.rate:
        offered, sustained = summary.offered_rate, summary.sustained_rate
        return offered is not None and sustained is not None and sustained < spec.saturation_ratio * offered
    if previous is None or previous.offered_rate is None or summary.offered_rate is None:
        return False
    return summary.offered_rate < previous.offered_rate * CONCURRENCY_GAIN


def judge(
    summary: LoadSummary, spec: SweepSpec, previous: SweepPoint | None
) -> tuple[bool, bool]:
    """(passed, over-saturated) for one step; a saturated step never passes (pure)."""
    saturated = is_saturated(summary, spec, previous.summary if previous is not None else None)
    return slo_met(summary, spec) and not saturated, saturated


def median_run(runs: list[LoadSummary]) -> LoadSummary:
    """The run with the median output throughput (the lower middle one of an even count); pure."""
    ranked = sorted(runs, key=lambda s: s.output_throughput_tok_s)
    return ranked[(len(ranked) - 1) // 2]


def _measure(cfg: LoadConfig, out: Path, repeat: RepeatSpec | None,
             console: Console | None, prepared: Prepared) -> dict[str, object]:
    """One step's run, or its repeated runs: the SweepPoint fields they give."""
    if repeat is None or not repeat.repeating:
        summary = run_load(cfg, out, console, prepared)
        return {"summary": summary, "runs_behind": int(summary.client is not None and summary.client.behind)}
    result = run_repeats(cfg, repeat, out, functools.partial(run_load, prepared=prepared), console)
    return {"summary": median_run(result.runs), "repeats": result.repeats, "spread": result.spread,
            "runs_behind": result.client_behind}  # fmt: skip


def run_sweep(
    base: LoadConfig, spec: SweepSpec, out_dir: Path, console: Console | None = None,
    repeat: RepeatSpec | None = None, prepared: Prepared | None = None,
) -> SweepResult:
    """Walk up the load axis, then bisect; writes ``sweep.json`` and ``sweep.png`` to ``out_dir``.

    ``repeat``: run every step that many times (after its warm-up runs) and keep the spread. The steps share
    their tokenizer, in ``prepared`` when given; each draws its own prompts (:func:`step_seed`).
    """
    points: list[SweepPoint] = []
    prepared = prepared or Prepared()

    def step(value: float) -> SweepPoint:
        label = f"{spec.mode}-{value:g}"
        if console is not None:
            console.rule(f"sweep step {label}")
        measured = _measure(_config_at(base, spec, value), out_dir / label, repeat, console, prepared)
        summary = measured["summary"]
        assert isinstance(summary, LoadSummary)
        previous = max((p for p in points if p.value < value), key=lambda p: p.value, default=None)
        passed, saturated = judge(summary, spec, previous)
        point = SweepPoint.model_validate(
            {"value": value, "passed": passed, "saturated": saturated, "slo_met": slo_met(summary, spec), **measured}
        )
        points.append(point)
        return point

    value = spec.start
    last_ok: float | None = None
    first_bad: float | None = None
    while value <= spec.max_value:
        point = step(value)
        if not point.passed:
            first_bad = value
            break
        last_ok = value
        value *= spec.factor
    lo, hi = last_ok, first_bad
    for _ in range(spec.refine_steps if lo is not None and hi is not None else 0):
        assert lo is not None and hi is not None
        mid = (lo + hi) / 2 if spec.mode is SweepMode.rate else float(round((lo + hi) / 2))
        if mid in (lo, hi):
            break
        point = step(mid)
        lo, hi = (mid, hi) if point.passed else (lo, mid)
    best = max((p.value for p in points if p.passed), default=None)
    ordered = sorted(points, key=lambda p: p.value)
    result = SweepResult(mode=spec.mode.value, best=best, points=ordered,
                         behind_steps=[p.value for p in ordered if p.client_behind])
    (out_dir / "sweep.json").write_text(result.model_dump_json(indent=2))
    plot_sweep(result, out_dir / "sweep.png")
    return result


def plot_sweep(result: SweepResult, path: Path) -> None:
    """Throughput and latency percentiles against the load axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.value for p in result.points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(xs, [p.summary.request_throughput for p in result.points], "o-", label="achieved req/s")
    ax1.plot(xs, [p.summary.goodput or 0.0 for p in result.points], "s--", label="goodput req/s")
    ax1.plot(xs, [p.summary.sustained_rate or 0.0 for p in result.points], "^-", label="sustained req/s")
    if result.mode == "rate":
        ax1.plot(xs, xs, ":", color="grey", label="offered")
    ax1.set_xlabel(result.mode)
    ax1.set_ylabel("req/s")
    ax1.legend()
    for name in ("ttft_ms", "tpot_ms"):
        for pct, style in (("p50", "o-"), ("p99", "x--")):
            ys = [getattr(getattr(p.summary, name), pct) or float("nan") for p in result.points]
            ax2.plot(xs, ys, style, label=f"{name[:-3].upper()} {pct}")
    ax2.set_yscale("log")
    ax2.set_xlabel(result.mode)
    ax2.set_ylabel("ms")
    ax2.legend()
    if result.best is not None:
        for ax in (ax1, ax2):
            ax.axvline(result.best, color="green", alpha=0.4)
    fig.suptitle(f"bench sweep: best {result.mode} meeting SLOs = {result.best}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_rows(result: SweepResult) -> list[dict[str, object]]:
    """The curve as flat rows (for tables)."""
    return [
        {
            "value": p.value,
            "passed": p.passed,
            "saturated": p.saturated,
            "req_s": p.summary.request_throughput,
            "sustained": p.summary.sustained_rate,
            "tok_s": p.summary.output_throughput_tok_s,
            "goodput": p.summary.goodput,
            "ttft_p99": p.summary.ttft_ms.p99,
            "tpot_p99": p.summary.tpot_ms.p99,
            "client": point_verdict(p),
            **_spread_cells(p),
        }
        for p in result.points
    ]


def _spread_cells(point: SweepPoint) -> dict[str, object]:
    """``tok_s ±``: the 95% interval's half width over the step's repeats (only when the step repeated)."""
    if point.spread is None:
        return {}
    sp = point.spread.get("output_throughput_tok_s")
    half = None if sp is None or sp.ci95_high is None or sp.mean is None else sp.ci95_high - sp.mean
    return {"runs": point.repeats, "tok_s ±95%": half if half is not None else "-"}


def point_verdict(point: SweepPoint) -> str:
    """:func:`client_verdict` of a step, ``behind`` when any of its repeated runs' client fell behind."""
    if point.runs_behind > 0 and point.repeats > 1:
        return f"behind ({point.runs_behind}/{point.repeats} runs)"
    return "behind" if point.client_behind else client_verdict(point.summary)


def client_verdict(summary: LoadSummary) -> str:
    """``behind`` when the step's client fell behind (its timings then include its own lag), else ``ok``."""
    if summary.client is None:
        return "-"
    return "behind" if summary.client.behind else "ok"


def load_sweep(path: Path) -> SweepResult:
    """Read a ``sweep.json``."""
    return SweepResult.model_validate(json.loads(path.read_text()))
