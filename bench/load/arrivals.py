"""Arrival processes: when each request is scheduled to be sent.

Each process is a pydantic model registered under its ``kind`` (a discriminated union, so YAML, the
CLI and the Python API validate the same way). Open-loop processes give the gap to the next request
with :meth:`next_request_time`; ``concurrency`` is closed-loop: a request is scheduled the moment a
slot frees up. ``max_concurrency`` caps in-flight requests of an open-loop process; the schedule is not
moved by the cap, so the wait shows up as client queue time and in E2E (sched).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class TraceArrival(_Arrival):
    """Open loop on a trace's own times: each request is sent at the time the trace workload gives it."""

    kind: Literal["trace"] = "trace"
    max_concurrency: int | None = Field(default=None, ge=1)

    @property
    def in_flight_limit(self) -> int | None:
        """The optional cap."""
        return self.max_concurrency

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """Not a process: the times come from the trace (each prompt's ``at_s``)."""
        raise TypeError("a trace arrival sends each request at the trace's own time; it has no process")

    def describe(self) -> str:
        """``trace``."""
        return "trace"


class RatePoint(BaseModel):
    """From ``at_s`` on, the target rate is ``rate`` requests/s (a ramp: reaches it at ``at_s``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0)
    rate: float = Field(ge=0)


class RateSchedule(BaseModel):
    """A target rate that changes over time: steps (held until the next point) or a linear ramp between points.

    The text form is ``AT:RATE,AT:RATE,...`` (seconds from the start, requests/s) for steps, and the same
    after ``ramp:`` for a ramp: ``0:5,60:20,120:40`` holds 5/s for a minute, then 20/s, then 40/s until
    the run ends; ``ramp:0:5,120:40`` rises linearly from 5/s to 40/s over two minutes, then holds 40/s.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    points: tuple[RatePoint, ...] = Field(min_length=1)
    ramp: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        text = data.strip()
        ramp = text.startswith("ramp:")
        pairs = [p.split(":") for p in text.removeprefix("ramp:").split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"rate schedule {data!r}: write AT:RATE,AT:RATE (or ramp:AT:RATE,...), e.g. 0:5,60:20")
        return {"points": [{"at_s": a, "rate": r} for a, r in pairs], "ramp": ramp}

    @field_validator("points")
    @classmethod
    def _ordered(cls, points: tuple[RatePoint, ...]) -> tuple[RatePoint, ...]:
        if points[0].at_s != 0:
            raise ValueError("a rate schedule starts at 0 s")
        if any(b.at_s <= a.at_s for a, b in itertools.pairwise(points)):
            raise ValueError("the times of a rate schedule must increase")
        if points[-1].rate <= 0:
            raise ValueError("a rate schedule's last rate must be above 0 (the run would never end)")
        return points

    def rate_at(self, t: float) -> float:
        """The target rate at ``t`` s."""
        return self._rate_in(self._segment_of_time(t), t)

    def _rate_in(self, i: int, t: float) -> float:
        """The rate of segment ``i`` (from point ``i`` to the next) at ``t``."""
        a = self.points[i]
        if not self.ramp or i + 1 == len(self.points):
            return a.rate
        b = self.points[i + 1]
        return a.rate + (b.rate - a.rate) * (t - a.at_s) / (b.at_s - a.at_s)

    def mass(self, t: float) -> float:
        """Requests the schedule expects in ``[0, t]``: the integral of the rate."""
        total = 0.0
        for i, a in enumerate(self.points):
            if a.at_s >= t:
                break
            end = t if i + 1 == len(self.points) else min(t, self.points[i + 1].at_s)
            total += (end - a.at_s) * (a.rate + self._rate_in(i, end)) / 2
        return total

    def time_of(self, mass: float) -> float:
        """The time at which the expected requests reach ``mass`` (the inverse of :meth:`mass`)."""
        start = 0.0
        for i, a in enumerate(self.points):
            last = i + 1 == len(self.points)
            end = math.inf if last else self.points[i + 1].at_s
            seg = math.inf if last else self.mass(end) - start
            if mass < start + seg:
                left = mass - start
                if left <= 0:
                    return a.at_s
                slope = 0.0 if last else (self._rate_in(i, end) - a.rate) / (end - a.at_s)
                # rate·d + slope·d²/2 = left, solved in the form that stays exact as slope → 0
                return a.at_s + 2 * left / (a.rate + math.sqrt(a.rate * a.rate + 2 * slope * left))
            start += seg
        raise AssertionError("unreachable: the last segment is unbounded")

    def _segment_of_time(self, t: float) -> int:
        return max(i for i, p in enumerate(self.points) if p.at_s <= max(t, 0.0))

    def describe(self) -> str:
        """The text form."""
        body = ",".join(f"{p.at_s:g}:{p.rate:g}" for p in self.points)
        return ("ramp:" if self.ramp else "") + body


class ScheduleArrival(_Arrival):
    """Open loop at a rate that follows a :class:`RateSchedule`; ``process`` spaces the requests evenly
    (``constant``: each step sends exactly rate × length requests) or as a Poisson process of that rate.

    The k-th request goes at the time the schedule's expected count reaches k (constant) or the sum of k
    unit exponentials (Poisson): the inverse of the integrated rate, so a step or a ramp needs no special case.
    """

    kind: Literal["schedule"] = "schedule"
    schedule: RateSchedule
    process: Literal["constant", "poisson"] = Field(default="constant",
                                                    description="schedule: even gaps or a Poisson process")
    max_concurrency: int | None = Field(default=None, ge=1)

    @property
    def in_flight_limit(self) -> int | None:
        """The optional cap."""
        return self.max_concurrency

    def next_request_time(self, previous: float, rng: random.Random) -> float:
        """The time the expected count grows by one (or one unit exponential) past ``previous``."""
        gap = 1.0 if self.process == "constant" else rng.expovariate(1.0)
        return self.schedule.time_of(self.schedule.mass(previous) + gap)

    def offsets(self, seed: int) -> Iterator[float]:
        """The timetable from the running count itself (no rounding drift across steps)."""
        rng = random.Random(seed)
        mass = 0.0
        while True:
            yield self.schedule.time_of(mass)
            mass += 1.0 if self.process == "constant" else rng.expovariate(1.0)

    def describe(self) -> str:
        """``schedule=0:5,60:20`` (``ramp:`` for a ramp), with ``poisson`` when it is one."""
        extra = ",poisson" if self.process == "poisson" else ""
        return f"schedule={self.schedule.describe()}{extra}"


Arrival = Annotated[
    ConcurrencyArrival | ConstantArrival | PoissonArrival | GammaArrival | TraceArrival | ScheduleArrival,
    Field(discriminator="kind"),
]
