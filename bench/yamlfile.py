"""Compatibility alias of :mod:`backends.yamlfile`, where this module moved (the shared base that ``backends``,
``servers`` and ``bench`` all import; see ``docs/architecture.md``). New code imports ``backends.yamlfile``."""

from backends.yamlfile import (
    ConfigFileError,
    ModelT,
    describe,
    load_model,
    read_yaml,
)

__all__ = [
    "ConfigFileError",
    "ModelT",
    "describe",
    "load_model",
    "read_yaml",
]
