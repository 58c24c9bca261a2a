"""Whether an NVIDIA GPU is visible here, from the driver's files alone (no torch, no NVML, no subprocess).

One check for every caller: the engines that need CUDA (ExLlama), the vLLM platform choice, and the scraper
that decides whether NVML failing to load is worth a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
