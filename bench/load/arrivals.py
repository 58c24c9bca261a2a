"""Arrival processes: when each request is scheduled to be sent.

Each process is a pydantic model registered under its ``kind`` (a discriminated union, so YAML, the
CLI and the Python API validate the same way). Open-loop processes give the gap to the next request
with :meth:`next_request_time`; ``concurrency`` is closed-loop: a request is scheduled the moment a
slot frees up. ``max_concurrency`` caps in-flight requests of an open-loop process; the schedule is not
moved by the cap, so the wait shows up as client queue time and in E2E (sched).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Arrival(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def closed_loop(self) -> bool:
        """True when requests are driven by completions rather than a timetable."""
        return False

    @property
    def in_flight_limit(self) -> int | None:
        """At most this many requests in flight (None: unbounded)."""
        return None

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """Scheduled offset (s from the run start) of the request after one scheduled at ``previous``."""
        raise NotImplementedError

    def offsets(self, seed: int) -> Iterator[float]:
        """The open-loop timetable: 0, then each next_request_time, forever (deterministic per seed)."""
        rng = random.Random(seed)
        t = 0.0
        while True:
            yield t
            t = self.next_request_time(t, rng)

    def describe(self) -> str:
        """Short label for tables and plots."""
        raise NotImplementedError


class ConcurrencyArrival(_Arrival):
    """Closed loop: ``n`` virtual users, each sends its next request as soon as the last one ends."""

    kind: Literal["concurrency"] = "concurrency"
    n: int = Field(ge=1)

    @property
    def closed_loop(self) -> bool:
        """Completion-driven."""
        return True

    @property
    def in_flight_limit(self) -> int | None:
        """Exactly ``n`` users."""
        return self.n

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """Not a timetable: a closed loop schedules on completion."""
        raise TypeError("a concurrency arrival is completion-driven; it has no timetable")

    def describe(self) -> str:
        """``concurrency=N``."""
        return f"concurrency={self.n}"


class _OpenLoop(_Arrival):
    rate: float = Field(gt=0, description="mean requests per second")
    max_concurrency: int | None = Field(default=None, ge=1)

    @property
    def in_flight_limit(self) -> int | None:
        """The optional cap."""
        return self.max_concurrency


class ConstantArrival(_OpenLoop):
    """Evenly spaced requests at ``rate`` per second."""

    kind: Literal["constant"] = "constant"

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """``previous + 1/rate``."""
        return previous + 1.0 / self.rate

    def describe(self) -> str:
        """``constant=R/s``."""
        return f"constant={self.rate:g}/s"


class PoissonArrival(_OpenLoop):
    """Exponential gaps with mean ``1/rate`` (a Poisson process)."""

    kind: Literal["poisson"] = "poisson"

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """``previous + Exp(rate)``."""
        return previous + rng.expovariate(self.rate)

    def describe(self) -> str:
        """``poisson=R/s``."""
        return f"poisson={self.rate:g}/s"


class GammaArrival(_OpenLoop):
    """Gamma gaps with mean ``1/rate``; ``burstiness`` is the shape (1 = Poisson, < 1 burstier).

    Same parametrisation as ``vllm bench serve --burstiness``: shape k, scale 1/(rate·k).
    """

    kind: Literal["gamma"] = "gamma"
    burstiness: float = Field(default=1.0, gt=0, description="gamma shape (1 = Poisson)")

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """``previous + Gamma(k, 1/(rate·k))``."""
        return previous + rng.gammavariate(self.burstiness, 1.0 / (self.rate * self.burstiness))

    def describe(self) -> str:
        """``gamma=R/s,k``."""
        return f"gamma={self.rate:g}/s,k={self.burstiness:g}"


Arrival = Annotated[
    ConcurrencyArrival | ConstantArrival | PoissonArrival | GammaArrival,
    Field(discriminator="kind"),
]
