"""EXL2 / EXL3 conversion with exllamav2's and exllamav3's own converters (CUDA only).

Both packages import only with CUDA, so these targets are refused on a CPU machine before any work.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# (module run with ``python -m``, pip package); the converters' own CLIs.
CONVERTERS = {"exl2": ("exllamav2.conversion.convert_exl2", "exllamav2"),
              "exl3": ("exllamav3.conversion.convert_model", "exllamav3")}


class ExllamaError(RuntimeError):
    """The conversion cannot run here or failed."""


def require_cuda(fmt: str) -> None:
    """Refuse on a machine without CUDA, naming what is needed."""
    import torch

    if not torch.cuda.is_available():
        package = CONVERTERS[fmt][1]
        raise ExllamaError(f"{fmt} conversion needs an NVIDIA GPU with CUDA ({package} imports only with CUDA); "
                           f"run `bench quantize --to {fmt}` on the GPU machine")


def _command(fmt: str, src: Path, out: Path, work: Path, bits: float) -> list[str]:
    module = CONVERTERS[fmt][0]
    if fmt == "exl2":
        return [sys.executable, "-m", module, "-i", str(src), "-o", str(work), "-cf", str(out), "-b", str(bits)]
    return [sys.executable, "-m", module, "-i", str(src), "-o", str(out), "-w", str(work), "-b", str(bits)]


def convert_exllama(fmt: str, src: Path, out: Path, bits: float) -> dict[str, Any]:
    """Convert ``src`` to ``fmt`` at ``bits`` bits per weight into ``out``."""
    require_cuda(fmt)
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(_command(fmt, src, out, Path(work), bits), capture_output=True, text=True,
                                check=False)
    if result.returncode != 0:
        raise ExllamaError(f"{fmt} conversion failed:\n{(result.stderr or result.stdout)[-3000:]}")
    return {"tool": "bench quantize", "library": CONVERTERS[fmt][1], "bits_per_weight": bits}
