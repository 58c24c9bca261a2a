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
    """Bounded admission: running plus queued requests never exceed ``limit``.

    A request takes all the slots it needs at once or none (a multi-prompt completion needs one per prompt),
    so a refused request never holds slots. ``rejected`` counts the 429s.
    """

    limit: int
    inflight: int = 0
    rejected: int = 0

    def acquire(self, count: int = 1) -> list[Lease]:
        """Admit a request that needs ``count`` slots, or raise: 429 when full, 400 if it could never fit."""
        if count > self.limit:
            raise OpenAIError(
                400, f"This request needs {count} slots (one per prompt) but the server admits at most "
                f"{self.limit} requests at once. Send at most {self.limit} prompts per request.", param="prompt",
            )
        if self.inflight + count > self.limit:
            self.rejected += 1
            raise OpenAIError(
                429, f"The server is at capacity ({self.limit} requests in flight). Retry later.",
                type="rate_limit_exceeded", code="rate_limit_exceeded",
            )
        self.inflight += count
        return [Lease(self) for _ in range(count)]


@dataclass
class Lease:
    """One admitted request's slot; ``release`` is idempotent."""

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
