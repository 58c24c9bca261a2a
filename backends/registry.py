"""Backend registry: a name maps to a light config module and a lazily imported implementation.

Adding an engine means adding a folder under ``backends/`` and one line to :data:`BACKENDS`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from backends.base import Capabilities, EngineOptions
from backends.errors import MissingExtraError, UnknownBackendError


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's pieces live.

    ``config`` names a light module exposing ``CAPABILITIES``, ``validate(options, fmt)`` and
    ``availability()``; ``target`` is the heavy ``"module:Class"`` loaded only when chosen.
    """

    name: str
    kind: Literal["engine", "launcher"]
    config: str
    target: str
    extra: str


BACKENDS: MappingProxyType[str, BackendEntry] = MappingProxyType(
    {
        "transformers": BackendEntry(
            "transformers", "engine", "backends.transformers.config",
            "backends.transformers.engine:TransformersEngine", "transformers",
        ),
        "llamacpp": BackendEntry("llamacpp", "launcher", "backends.llamacpp.config",
                                 "backends.llamacpp.launcher:LlamaServerLauncher", "llamacpp"),
        "vllm": BackendEntry(
            "vllm", "launcher", "backends.vllm.config", "backends.vllm.launcher:VllmLauncher", "vllm",
        ),
        "exllamav2": BackendEntry("exllamav2", "engine", "backends.exllamav2.config", "backends.exllamav2.engine:ExLlamaV2Engine", "exllamav2"),  # noqa: E501
        "exllamav3": BackendEntry("exllamav3", "engine", "backends.exllamav3.config", "backends.exllamav3.engine:ExLlamaV3Engine", "exllamav3"),  # noqa: E501
    }
)


def names() -> list[str]:
    """Registered backend names."""
    return sorted(BACKENDS)


def entry(name: str) -> BackendEntry:
    """The registry entry for ``name``; an unknown name gets a "did you mean"."""
    try:
        return BACKENDS[name]
    except KeyError:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}; known: {', '.join(names())}.{hint}"
        ) from None


def config_module(name: str) -> Any:
    """The light config module of a backend (never imports the engine)."""
    return importlib.import_module(entry(name).config)


def capabilities(name: str) -> Capabilities:
    """What the backend can do."""
    caps: Capabilities = config_module(name).CAPABILITIES
    return caps


def availability(name: str) -> str | None:
    """``None`` when the backend can run here, else the reason it cannot."""
    reason: str | None = config_module(name).availability()
    return reason


def validate(name: str, options: EngineOptions, fmt: str) -> None:
    """Refuse options or a checkpoint format the backend cannot honour."""
    config_module(name).validate(options, fmt)


def load_class(name: str) -> Any:
    """Import and return the backend's implementation class.

    A missing dependency raises :class:`MissingExtraError` naming the extra to install.
    """
    spec = entry(name)
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"backends", "bench", "servers"}:
            raise
        raise MissingExtraError(name, spec.extra, exc.name or "?") from exc
    return getattr(module, attr)


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None
