"""Whether an NVIDIA GPU is visible here, from the driver's files alone (no torch, no NVML, no subprocess).

One check for every caller: the engines that need CUDA (ExLlama), the vLLM platform choice, and the scraper
that decides whether NVML failing to load is worth a warning. :func:`query_nvidia_smi` asks ``nvidia-smi`` for
the cards, their compute capability and the driver's CUDA version, for the bootstrap's choice of setup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Files the NVIDIA driver creates: its control and first device node, and its /proc entry.
NVIDIA_DRIVER_FILES = (Path("/dev/nvidiactl"), Path("/dev/nvidia0"), Path("/proc/driver/nvidia/version"))


def nvidia_driver_file(paths: Sequence[Path] = NVIDIA_DRIVER_FILES) -> Path | None:
    """The first of ``paths`` that exists (evidence of an NVIDIA driver and GPU), or ``None``."""
    return next((path for path in paths if path.exists()), None)


def cuda_missing_reason(paths: Sequence[Path] = NVIDIA_DRIVER_FILES) -> str | None:
    """``None`` when CUDA can see a GPU here, else why not.

    ``CUDA_VISIBLE_DEVICES`` set to ``""`` or ``-1`` hides every GPU from CUDA even where the driver is there.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return "needs CUDA: CUDA_VISIBLE_DEVICES hides every GPU"
    if nvidia_driver_file(paths) is None:
        return "needs CUDA: no NVIDIA GPU or driver on this machine"
    return None


def cuda_present() -> bool:
    """Whether CUDA can see a GPU here (:func:`cuda_missing_reason` is ``None``)."""
    return cuda_missing_reason() is None


# The fields asked of ``nvidia-smi --query-gpu``, in this order (``--format=csv,noheader,nounits``).
SMI_QUERY = ("name", "compute_cap", "driver_version", "memory.total")
_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)*)")


@dataclass(frozen=True)
class GpuInfo:
    """One card as ``nvidia-smi`` reports it."""

    name: str
    compute_cap: str  # "9.0" on an H100
    driver: str
    memory_mib: int


@dataclass(frozen=True)
class SmiReport:
    """What ``nvidia-smi`` says about this machine: its cards and the newest CUDA its driver supports."""

    gpus: tuple[GpuInfo, ...]
    cuda_version: str | None

    def describe(self) -> str:
        """One line: ``1x NVIDIA H100 80GB HBM3 (compute 9.0, 81559 MiB), driver 580.159.04, CUDA 13.0``."""
        if not self.gpus:
            return "no GPU listed by nvidia-smi"
        kinds: dict[str, int] = {}
        for gpu in self.gpus:
            label = f"{gpu.name} (compute {gpu.compute_cap}, {gpu.memory_mib} MiB)"
            kinds[label] = kinds.get(label, 0) + 1
        cards = ", ".join(f"{n}x {label}" for label, n in kinds.items())
        return f"{cards}, driver {self.gpus[0].driver}, CUDA {self.cuda_version or 'unknown'}"


def parse_gpu_query(text: str) -> tuple[GpuInfo, ...]:
    """The rows of ``nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits``, one card each.

    A row that does not have the four fields, or whose compute capability or memory is not a number, is
    dropped (``[N/A]`` on a card the driver cannot query).
    """
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(SMI_QUERY):
            continue
        name, cap, driver, memory = fields
        memory = memory.removesuffix("MiB").strip()
        if re.fullmatch(r"[0-9]+\.[0-9]+", cap) and memory.isdigit():
            gpus.append(GpuInfo(name, cap, driver, int(memory)))
    return tuple(gpus)


def parse_cuda_version(text: str) -> str | None:
    """The ``CUDA Version: 13.0`` of ``nvidia-smi``'s banner (the newest CUDA the driver runs), or None."""
    found = _CUDA_VERSION.search(text)
    return found.group(1) if found else None


def _smi(smi: str, args: list[str], timeout_s: float) -> str | None:
    try:
        result = subprocess.run([smi, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def query_nvidia_smi(timeout_s: float = 30.0) -> SmiReport | None:
    """The cards ``nvidia-smi`` (on PATH) lists, or None where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    rows = _smi(smi, [f"--query-gpu={','.join(SMI_QUERY)}", "--format=csv,noheader,nounits"], timeout_s)
    if rows is None:
        return None
    banner = _smi(smi, [], timeout_s) or ""
    return SmiReport(parse_gpu_query(rows), parse_cuda_version(banner))
