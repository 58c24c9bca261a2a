"""The executor's clock, injectable so that scheduling can be tested with scripted time."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on a monotonic clock shared by the records and the scraper."""

    def now(self) -> float:
        """Current time in seconds."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return at (or just after) time ``t``; return at once if ``t`` has passed."""
        ...


class MonotonicClock:
    """``time.perf_counter`` (CLOCK_MONOTONIC on Linux, so comparable across processes)."""

    def now(self) -> float:
        """Current time in seconds."""
        return time.perf_counter()

    async def sleep_until(self, t: float) -> None:
        """Sleep until ``t``, never returning before it. uvloop's timers have millisecond resolution and start from
        the loop's cached time, so one ``asyncio.sleep`` can wake up to about a millisecond early: a request due at
        the run's start was then sent before it."""
        delay = t - time.perf_counter()
        while delay > 0:  # at most one more round, of under a millisecond
            await asyncio.sleep(delay)
            delay = t - time.perf_counter()
