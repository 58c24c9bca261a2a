"""Compatibility alias of :mod:`backends.paths`, where this module moved (the shared base that ``backends``,
``servers`` and ``bench`` all import; see ``docs/architecture.md``). New code imports ``backends.paths``."""

from backends.paths import (
    REPO_ROOT,
    cache_dir,
    default_registry_path,
    reports_dir,
    venvs_dir,
)

__all__ = [
    "REPO_ROOT",
    "cache_dir",
    "default_registry_path",
    "reports_dir",
    "venvs_dir",
]
