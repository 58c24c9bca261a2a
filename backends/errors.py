"""Errors raised while configuring or starting an engine."""

from __future__ import annotations


class BackendError(Exception):
    """Base class for engine setup errors."""


class UnknownBackendError(BackendError):
    """The backend name is not in the registry."""


class MissingExtraError(BackendError):
    """An engine's optional dependency is not installed."""

    def __init__(self, backend: str, extra: str, missing: str) -> None:
        super().__init__(
            f"backend {backend!r} needs the Python package {missing!r}, which is not installed. "
            f"Install it with: pip install 'servebench[{extra}]'"
        )
        self.backend = backend
        self.extra = extra
        self.missing = missing


class UnsupportedOptionError(BackendError):
    """An engine was asked for an option or format it cannot honour."""

    def __init__(self, backend: str, option: str, value: object, supported: object = None) -> None:
        hint = f"; supported: {supported}" if supported is not None else ""
        super().__init__(f"backend {backend!r} does not support {option}={value!r}{hint}")
        self.backend = backend
        self.option = option
        self.value = value


class EngineDeadError(BackendError):
    """The engine's worker stopped; requests can no longer be served."""
