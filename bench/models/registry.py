"""Compatibility alias of :mod:`backends.checkpoints`, where this module moved (the shared base that ``backends``,
``servers`` and ``bench`` all import; see ``docs/architecture.md``). New code imports ``backends.checkpoints``."""

from backends.checkpoints import (
    Format,
    ModelEntry,
    Registry,
    RegistryError,
    append_entry,
    load_registry,
    model_bytes_of,
)

__all__ = [
    "Format",
    "ModelEntry",
    "Registry",
    "RegistryError",
    "append_entry",
    "load_registry",
    "model_bytes_of",
]
