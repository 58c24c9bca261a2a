"""Steady state: did throughput hold over the run, or was it still warming up (or collapsing)? (pure)

The sending window (first to last measured send) is cut in thirds; the output tokens that arrived in the
first and in the last third give two rates. Their ratio ``last / first`` is 1 in a steady run; the run is
flagged **not steady** when it is outside ``1 ± STEADY_TOLERANCE``. The drain after the last send is left
out (fewer requests in flight there by design), and a sending window shorter than ``MIN_E2E_SPAN`` median
E2Es is too short to judge (the first third is then mostly the pipeline filling).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from bench.load.records import RequestRecord

STEADY_TOLERANCE = 0.2
MIN_E2E_SPAN = 3.0


class SteadyState(BaseModel):
    """Output tok/s in the first and last thirds of the sending window, and the verdict."""

    model_config = ConfigDict(frozen=True)

    first_third_tok_s: float
    last_third_tok_s: float
    ratio: float | None
    steady: bool


def tokens_between(records: Sequence[RequestRecord], start: float, end: float) -> int:
    """Output tokens of the records that arrived in ``[start, end)``."""
    return sum(1 for r in records for t in r.token_times if start <= t < end)


def steady_state(records: Sequence[RequestRecord]) -> SteadyState | None:
    """The thirds' rates over the successful measured requests; None when the window is too short to judge."""
    ok = [r for r in records if r.ok and not r.warmup and r.token_times]
    if len(ok) < 3:
        return None
    first, last = min(r.sent_t for r in ok), max(r.sent_t for r in ok)
    third = (last - first) / 3
    if third <= 0 or last - first < MIN_E2E_SPAN * statistics.median(r.end_t - r.sent_t for r in ok):
        return None
    early = tokens_between(ok, first, first + third) / third
    late = tokens_between(ok, last - third, last) / third
    ratio = late / early if early > 0 else None
    steady = ratio is not None and abs(ratio - 1) <= STEADY_TOLERANCE
    return SteadyState(first_third_tok_s=early, last_third_tok_s=late, ratio=ratio, steady=steady)
