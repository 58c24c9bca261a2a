"""The load generator's clock: a request is never sent before its scheduled time."""

from __future__ import annotations

import time

import uvloop

from bench.load.clock import MonotonicClock


def test_sleep_until_never_wakes_early_under_uvloop() -> None:
    """uvloop (which ``bench load`` runs on) wakes a plain ``asyncio.sleep`` up to about 1 ms early, about a third of
    the time on this machine; ``sleep_until`` sleeps again until its time has come."""
    clock = MonotonicClock()

    async def early_wakes() -> list[float]:
        early = []
        for i in range(400):
            due = time.perf_counter() + (i % 20) * 0.0005 + 0.0001
            await clock.sleep_until(due)
            early.append(due - time.perf_counter())
        return [e for e in early if e > 0]

    assert uvloop.run(early_wakes()) == []
