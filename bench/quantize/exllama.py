"""EXL2 / EXL3 conversion with exllamav2's and exllamav3's own converters (CUDA only).

Both packages import only with CUDA, so these targets are refused on a CPU machine before any work.

EXL2's converter first measures how much each layer suffers at each bit width (the slow part), then picks
widths for the asked bits per weight. The measurement does not depend on the bits, so it is kept per source
checkpoint (:func:`measurement_file`) and a second bit rate of the same source passes it back with ``-m``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from backends.paths import cache_dir
from backends.registry import module_available

# (module run with ``python -m``, pip package); the converters' own CLIs.
CONVERTERS = {"exl2": ("exllamav2.conversion.convert_exl2", "exllamav2"),
              "exl3": ("exllamav3.conversion.convert_model", "exllamav3")}
# Bits per weight each converter can reach (exllamav2 warns outside 2-8 that the rate "will likely not be
# attainable"; exllamav3 quantizes to 1-8 bits).
BITS_RANGE = {"exl2": (2.0, 8.0), "exl3": (1.0, 8.0)}
# EXL2 calibration sizing: rows and tokens per row for the quantization pass (-r, -l) and the measurement pass
# (-mr, -ml). The converter's defaults (100 x 2048 and 16 x 2048) are sized for large models; these are the
# sizes benchmarks/gpu/exllama_measure.py converted SmolLM2-135M with on an H100 in 236-264 s (one device call
# allows 600 s; the defaults calibrate on about 5 times the tokens).
EXL2_CALIBRATION = {"dataset_rows": 40, "length": 1024, "measurement_rows": 8, "measurement_length": 1024}
_EXL2_FLAGS = {"dataset_rows": "-r", "length": "-l", "measurement_rows": "-mr", "measurement_length": "-ml"}


class ExllamaError(RuntimeError):
    """The conversion cannot run here or failed."""


def require_cuda(fmt: str) -> None:
    """Refuse on a machine without CUDA, naming what is needed."""
    import torch

    if not torch.cuda.is_available():
        package = CONVERTERS[fmt][1]
        raise ExllamaError(f"{fmt} conversion needs an NVIDIA GPU with CUDA ({package} imports only with CUDA); "
                           f"run `bench quantize --to {fmt}` on the GPU machine")


def check_bits(fmt: str, bits: float) -> None:
    """Refuse a bit rate the converter for ``fmt`` cannot reach."""
    low, high = BITS_RANGE[fmt]
    if not low <= bits <= high:
        raise ExllamaError(f"--bits {bits}: {fmt} takes {low} to {high} bits per weight")


def measurement_file(src: Path) -> Path:
    """Where the EXL2 measurement of ``src`` is kept: ``{cache}/work/exl2-measurement/<folder>-<hash of its
    resolved path>/``, one file per measurement sizing (a measurement made with other rows is another file)."""
    resolved = src.resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    sizing = f"mr{EXL2_CALIBRATION['measurement_rows']}-ml{EXL2_CALIBRATION['measurement_length']}"
    return cache_dir() / "work" / "exl2-measurement" / f"{resolved.name}-{key}" / f"measurement-{sizing}.json"


def _command(fmt: str, src: Path, out: Path, work: Path, bits: float, measurement: Path | None = None) -> list[str]:
    module = CONVERTERS[fmt][0]
    if fmt == "exl3":
        return [sys.executable, "-m", module, "-i", str(src), "-o", str(out), "-w", str(work), "-b", str(bits)]
    cmd = [sys.executable, "-m", module, "-i", str(src), "-o", str(work), "-cf", str(out), "-b", str(bits)]
    for key, flag in _EXL2_FLAGS.items():
        cmd += [flag, str(EXL2_CALIBRATION[key])]
    return cmd + (["-m", str(measurement)] if measurement else [])


def converter_input(src: Path, work: Path) -> Path:
    """``src``, or where its config.json has RoPE theta only under ``rope_parameters`` (transformers 5), a folder
    in ``work`` of links to its files with the top-level ``rope_theta`` added: exllamav2 0.3.2 reads only that
    key and would calibrate with theta 10000 (backends/exllamav2/README.md, "RoPE theta")."""
    config = json.loads((src / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if theta is None or "rope_theta" in config:
        return src
    view = work / "input"
    view.mkdir()
    for item in src.iterdir():
        if item.name != "config.json":
            (view / item.name).symlink_to(item.resolve())
    (view / "config.json").write_text(json.dumps({**config, "rope_theta": theta}, indent=2))
    return view


def converter_env(fmt: str) -> dict[str, str]:
    """The converter's environment: for EXL2 without flash-attn or xformers, ``EXLLAMA_NO_SDPA=1``.

    exllamav2 0.3.2's SDPA fallback drops the causal mask (backends/exllamav2/README.md, "SDPA"), so its
    calibration forward would let every token see the ones after it; the variable is the library's switch to
    its matmul path, which is causal (the engine sets the same switch, ``config.no_sdpa``, when it serves).
    """
    env = dict(os.environ)
    if fmt == "exl2" and not (module_available("flash_attn") or module_available("xformers")):
        env["EXLLAMA_NO_SDPA"] = "1"
    return env


def _convert(fmt: str, src: Path, out: Path, bits: float, measured: Path | None) -> bool:
    """Run the converter; for EXL2, pass ``measured`` back if it exists, else keep the measurement it makes
    there. Returns whether a kept measurement was reused."""
    reuse = measured if measured is not None and measured.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        source = converter_input(src, Path(tmp)) if fmt == "exl2" else src
        result = subprocess.run(_command(fmt, source, out, work, bits, reuse), capture_output=True, text=True,
                                check=False, env=converter_env(fmt))
        if result.returncode != 0:
            raise ExllamaError(f"{fmt} conversion failed:\n{(result.stderr or result.stdout)[-3000:]}")
        if measured is not None and reuse is None and (work / "measurement.json").is_file():
            measured.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "measurement.json", measured)
    return reuse is not None


def convert_exllama(fmt: str, src: Path, out: Path, bits: float) -> dict[str, Any]:
    """Convert ``src`` to ``fmt`` at ``bits`` bits per weight into ``out``; returns the recipe."""
    check_bits(fmt, bits)
    require_cuda(fmt)
    measured = measurement_file(src) if fmt == "exl2" else None
    reused = _convert(fmt, src, out, bits, measured)
    recipe: dict[str, Any] = {"tool": "bench quantize", "library": CONVERTERS[fmt][1], "bits_per_weight": bits}
    if fmt == "exl2":
        recipe["calibration"] = {**EXL2_CALIBRATION, "dataset": "exllamav2 default"}
        recipe["measurement"] = "reused" if reused else "measured"
    return recipe
