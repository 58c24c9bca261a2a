"""Server settings: one pydantic model behind ``bench serve``'s flags and ``python -m servers``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServerSettings(BaseModel):
    """How the HTTP server behaves, independent of the engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = Field(default=None, description="Require 'Authorization: Bearer <key>' on /v1.")
    served_model_name: str = Field(description="The model id clients send.")
    max_queue: int = Field(default=64, ge=0, description="Requests waiting beyond the engine's batch; 429 past it.")
    max_concurrency: int = Field(default=8, ge=1, description="Requests the engine runs at once.")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="How long shutdown waits for running requests.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024,
                                description="Largest request body accepted; 413 past it.")
