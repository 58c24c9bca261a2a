"""Multi-turn figures over request records (pure: no I/O, no clock).

- by turn: TTFT and TPOT of every turn index (turn 0 is each session's first request), the mean prompt, and the
  share of the prompt the server took from its prefix cache where its ``usage`` says so
  (``prompt_tokens_details.cached_tokens``);
- achieved sessions = the sessions open at once, averaged over the steady window (:func:`achieved_sessions`).
  A session is open from its first turn's scheduled time to the end of its last turn's stream, less the
  time its turns were sent late (``sent − scheduled``): a client that cannot keep up opens fewer sessions than
  asked (``target``), and the summary says so (:func:`bench.metrics.health.sessions_behind_reason`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bench.load.records import RequestRecord
from bench.metrics.client import SessionFigures, TurnStats, stats_ms, tpot, ttft


def multi_turn(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """The measured records that are turns of a session."""
    return [r for r in records if r.session is not None and r.turn is not None and not r.warmup]


def by_turn(records: Sequence[RequestRecord]) -> list[TurnStats]:
    """TTFT, TPOT, prompt and cached tokens per turn index (successful turns; empty: no multi-turn records)."""
    groups: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in multi_turn(records):
        if r.ok:
            groups[r.turn or 0].append(r)
    return [_turn_stats(turn, groups[turn]) for turn in sorted(groups)]


def _turn_stats(turn: int, rs: list[RequestRecord]) -> TurnStats:
    prompts = [r.prompt_tokens for r in rs if r.prompt_tokens is not None]
    cached = [(r.cached_tokens, r.prompt_tokens) for r in rs if r.cached_tokens is not None and r.prompt_tokens]
    return TurnStats(
        turn=turn, n=len(rs), ttft_ms=stats_ms(ttft(r) for r in rs), tpot_ms=stats_ms(tpot(r) for r in rs),
        prompt_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
        cached_tokens_mean=sum(c for c, _ in cached) / len(cached) if cached else None,
        cached_fraction=sum(c for c, _ in cached) / sum(p for _, p in cached) if cached else None,
    )  # fmt: skip


def achieved_sessions(records: Sequence[RequestRecord]) -> float | None:
    """Sessions open at once, averaged over the steady window (None: an empty window).

    The steady window runs from the first turn due to the later of the last session's start and the first
    session's end. Until then no user can have been turned away by the run's bound (a session takes its turns'
    indices when it starts, so a user is turned away only when it starts a session past the request count, after
    the last session started; a single wave of sessions is whole until the first one ends), so a shortfall there
    is the client's own.
    """
    turns = multi_turn(records)
    if not turns:
        return None
    spans: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in turns:
        spans[r.session or 0].append(r)
    start = min(r.scheduled_t for r in turns)
    last_start = max(min(r.scheduled_t for r in rs) for rs in spans.values())
    first_end = min(max(r.closed_t or r.end_t for r in rs) for rs in spans.values())
    end = max(last_start, first_end)
    if end <= start:
        return None
    return sum(_open_time(rs, start, end) for rs in spans.values()) / (end - start)


def _open_time(rs: list[RequestRecord], start: float, end: float) -> float:
    """A session's open time inside ``[start, end]``, less its turns' lateness."""
    first = min(r.scheduled_t for r in rs)
    last = max(r.closed_t or r.end_t for r in rs)
    late = sum(max(min(r.sent_t, end) - max(r.scheduled_t, start), 0.0) for r in rs)
    return max(min(last, end) - max(first, start) - late, 0.0)


def session_figures(records: Sequence[RequestRecord], target: int | None) -> SessionFigures | None:
    """Sessions, mean turns, achieved against ``target``, lateness (None: no multi-turn records)."""
    turns = multi_turn(records)
    if not turns:
        return None
    sessions = {r.session for r in turns}
    return SessionFigures(sessions=len(sessions), turns_mean=len(turns) / len(sessions), target=target,
                          achieved=achieved_sessions(turns), late_ms=stats_ms(r.sent_t - r.scheduled_t for r in turns))
