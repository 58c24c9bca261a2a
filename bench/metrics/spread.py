"""The spread of a figure over repeated runs of one load point (pure: no I/O, no clock).

- mean and sample standard deviation (n − 1 in the denominator);
- a 95% confidence interval of the mean: mean ± t(0.975, n − 1) × std / √n (Student's t, since a handful of
  repeats is the usual case);
- two configurations are **within noise** of each other on a figure when their intervals overlap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from bench.metrics.client import LoadSummary

# Two-sided 95% Student's t quantiles t(0.975, df) for df = 1..30; past 30 the normal 1.96 is close enough.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
Z_975 = 1.96


class Spread(BaseModel):
    """Mean, standard deviation and 95% interval of one figure over ``n`` runs (``std``/interval need n ≥ 2)."""

    model_config = ConfigDict(frozen=True)

    n: int
    mean: float | None = None
    std: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None
    values: list[float] = []

    @property
    def rel_std(self) -> float | None:
        """Coefficient of variation: std / mean."""
        if self.std is None or not self.mean:
            return None
        return self.std / abs(self.mean)


def t_975(df: int) -> float:
    """The two-sided 95% Student's t quantile for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least one degree of freedom (two values)")
    return T_975[df - 1] if df <= len(T_975) else Z_975


def spread(values: Sequence[float | None]) -> Spread:
    """:class:`Spread` of the values given (``None``s, figures a run did not have, are left out)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Spread(n=0)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Spread(n=1, mean=mean, values=xs)
    std = statistics.stdev(xs)
    half = t_975(len(xs) - 1) * std / math.sqrt(len(xs))
    return Spread(n=len(xs), mean=mean, std=std, ci95_low=mean - half, ci95_high=mean + half, values=xs)


def within_noise(a: Spread, b: Spread) -> bool | None:
    """Whether the two 95% intervals overlap (None when either has no interval)."""
    if None in (a.ci95_low, a.ci95_high, b.ci95_low, b.ci95_high):
        return None
    assert a.ci95_low is not None and a.ci95_high is not None and b.ci95_low is not None and b.ci95_high is not None
    return a.ci95_low <= b.ci95_high and b.ci95_low <= a.ci95_high


# The figures a repeated load point reports the spread of, each read from one run's summary.
FIGURES: tuple[tuple[str, Callable[[LoadSummary], float | None]], ...] = (
    ("output_throughput_tok_s", lambda s: s.output_throughput_tok_s),
    ("request_throughput", lambda s: s.request_throughput),
    ("ttft_mean_ms", lambda s: s.ttft_ms.mean),
    ("ttft_p50_ms", lambda s: s.ttft_ms.p50),
    ("tpot_mean_ms", lambda s: s.tpot_ms.mean),
    ("tpot_p50_ms", lambda s: s.tpot_ms.p50),
    ("itl_mean_ms", lambda s: s.itl_ms.mean),
)


def repeat_spreads(summaries: Sequence[LoadSummary]) -> dict[str, Spread]:
    """The spread of every figure in :data:`FIGURES` over the runs' summaries."""
    return {name: spread([get(s) for s in summaries]) for name, get in FIGURES}


def compare_spreads(a: dict[str, Spread], b: dict[str, Spread]) -> dict[str, bool | None]:
    """Per figure both have: whether configuration ``a`` is within noise of ``b``."""
    return {name: within_noise(a[name], b[name]) for name in a if name in b}
