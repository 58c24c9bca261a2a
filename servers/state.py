"""Per-app state: the engine, its settings, metrics and the admission bound (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from backends.base import Engine
from servers.errors import OpenAIError
from servers.metrics import ServerMetrics
from servers.settings import ServerSettings


@dataclass
class Admission:
    """Bounded admission: running plus queued requests never exceed ``limit``."""

    limit: int
    inflight: int = 0

    def acquire(self) -> Lease:
        """Admit one request or raise 429."""
        if self.inflight >= self.limit:
            raise OpenAIError(
                429, f"The server is at capacity ({self.limit} requests in flight). Retry later.",
                type="rate_limit_exceeded", code="rate_limit_exceeded",
            )
        self.inflight += 1
        return Lease(self)


@dataclass
class Lease:
    """One admitted request; ``release`` is idempotent."""

    admission: Admission
    released: bool = field(default=False)

    def release(self) -> None:
        """Give the slot back (safe to call twice)."""
        if not self.released:
            self.released = True
            self.admission.inflight -= 1


@dataclass
class AppState:
    """Everything a route needs, stored on ``app.state.sb``."""

    engine: Engine
    settings: ServerSettings
    metrics: ServerMetrics
    admission: Admission


def get_state(request: Request) -> AppState:
    """The app's state, for routes."""
    state: AppState = request.app.state.sb
    return state
