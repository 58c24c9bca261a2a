"""Compatibility alias of :mod:`backends.venvs`, where this module moved (the shared base that ``backends``,
``servers`` and ``bench`` all import; see ``docs/architecture.md``). New code imports ``backends.venvs``."""

from backends.venvs import (
    MARKER,
    EngineVenv,
    VenvError,
    cli,
)

__all__ = [
    "MARKER",
    "EngineVenv",
    "VenvError",
    "cli",
]
