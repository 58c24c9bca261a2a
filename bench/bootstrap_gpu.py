"""The GPU half of ``python3 -m bench.bootstrap``: which device to set up for, and the GPU engines' steps.

Standard library only, like the bootstrap. The device is ``--device``, else ``$SERVEBENCH_DEVICE``, else
``auto``: CUDA where ``nvidia-smi`` lists a GPU that ``CUDA_VISIBLE_DEVICES`` does not hide. On CUDA the
bootstrap adds, after the CPU machine's setup, one step per GPU engine (vLLM 0.25.0 in the ``vllm-cuda`` venv,
llama.cpp built with CUDA, ExLlamaV2 and ExLlamaV3 with their kernels compiled) and the seed table's quantized
checkpoints, then runs :data:`GPU_MATRIX` instead of the CPU matrix. A GPU step that fails is recorded with the
tail of its output in :data:`RECORD` and the others go on; ``bench run`` then skips the cells that needed it and
says why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backends.gpu import SmiReport
from backends.llamacpp.build import server_binary
from backends.vllm.venv import VLLM_CUDA, VLLM_CUDA_VERSION

Device = Literal["cpu", "cuda"]
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_ENV = "SERVEBENCH_DEVICE"
GPU_MATRIX = "benchmarks/gpu/seed-table.yaml"
RECORD = "gpu-setup.json"  # in the main venv's folder, beside setup-times.json
TAIL_LINES = 20
# The HF checkpoint every quantized cell of the seed table is made from (bench models prepare writes it).
SOURCE = "smollm2-135m-instruct-hf"
# The seed table's quantized checkpoints bench quantize can make: (entry name, --to, needs this GPU step, the
# rate in bits per weight for EXL2). The 6.0 bpw conversion reuses the 4.0 one's measurement pass.
CHECKPOINTS = (
    (f"{SOURCE}-fp8", "fp8", None, None),
    (f"{SOURCE}-w4a16", "w4a16", None, None),
    (f"{SOURCE}-gptq-4bit", "gptq-4bit", None, None),
    (f"{SOURCE}-awq-4bit", "awq-4bit", None, None),
    (f"{SOURCE}-bnb-4bit", "bnb-4bit", None, None),  # an entry only: vLLM and Transformers quantize at load
    ("smollm2-135m-instruct-exl2-4.0bpw", "exl2", "exllamav2", "4.0"),
    ("smollm2-135m-instruct-exl2-6.0bpw", "exl2", "exllamav2", "6.0"),
)


@dataclass(frozen=True)
class DeviceChoice:
    """The device the bootstrap sets up for, and why."""

    device: Device
    reason: str
    smi: SmiReport | None = None

    def cuda_archs(self) -> str:
        """``TORCH_CUDA_ARCH_LIST`` for the cards found (``9.0``), empty where none were listed."""
        caps = sorted({gpu.compute_cap for gpu in self.smi.gpus}, key=float) if self.smi else []
        return ";".join(caps)


def requested_device(flag: str | None, environ: Mapping[str, str]) -> str:
    """``--device``, else ``$SERVEBENCH_DEVICE``, else ``auto`` (an unknown value is an error naming the choices)."""
    wanted = (flag or environ.get(DEVICE_ENV) or "auto").strip().lower()
    if wanted not in DEVICE_CHOICES:
        source = "--device" if flag else f"${DEVICE_ENV}"
        raise ValueError(f"{source} must be one of {', '.join(DEVICE_CHOICES)}, not {wanted!r}")
    return wanted


def choose_device(requested: str, smi: SmiReport | None, visible: str | None) -> DeviceChoice:
    """CUDA or CPU: as asked, or (``auto``) CUDA where ``nvidia-smi`` lists a GPU that ``visible`` does not hide."""
    found = smi.describe() if smi is not None else "no nvidia-smi on PATH"
    if requested == "cpu":
        return DeviceChoice("cpu", f"asked for; nvidia-smi: {found}", smi)
    if requested == "cuda":
        return DeviceChoice("cuda", f"asked for; nvidia-smi: {found}", smi)
    if smi is None or not smi.gpus:
        return DeviceChoice("cpu", found, smi)
    if visible is not None and visible.strip() in ("", "-1"):
        return DeviceChoice("cpu", f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU ({found})", smi)
    return DeviceChoice("cuda", f"nvidia-smi: {found}", smi)


@dataclass(frozen=True)
class GpuStep:
    """One GPU step: commands run in order in the repository, skipped when ``done()`` says it is cached."""

    name: str
    what: str
    commands: tuple[tuple[str, ...], ...]
    done: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    needs: str | None = None  # a GPU step that must have succeeded first
    marker: Path | None = None  # written with ``stamp`` after success (for steps with no cache of their own)
    stamp: str = ""
    undo: tuple[str, ...] = ()  # run after a failure, so that bench run skips the engine instead of retrying it


def _marker_done(marker: Path, stamp: str) -> Callable[[], bool]:
    return lambda: marker.is_file() and marker.read_text() == stamp


def _registered(registry: Path, name: str) -> Callable[[], bool]:
    pattern = re.compile(rf"^\s*-\s*name:\s*['\"]?{re.escape(name)}['\"]?\s*$", re.MULTILINE)
    return lambda: registry.is_file() and bool(pattern.search(registry.read_text()))


def _exllama_step(python: str, venv: Path, stamp: str, extra: str, version: str, check: str,
                  env: Mapping[str, str], built_in: str) -> GpuStep:
    marker = venv / f".servebench-{extra}"
    return GpuStep(
        extra, f"{extra} {version} into .venv (an in-process engine), its CUDA kernels compiled now rather than "
               f"at the first cell (nvcc needed; {built_in})",
        ((python, "-m", "pip", "install", "-q", "-e", f".[{extra}]"), (python, "-c", check)),
        _marker_done(marker, stamp), env, marker=marker, stamp=stamp,
        # installed but unbuilt, every cell would compile the kernels again (minutes) and fail; uninstalled, its
        # cells are skipped as "not installed" and the reason is in the record
        undo=(python, "-m", "pip", "uninstall", "-y", "-q", extra))


def gpu_steps(python: str, venv: Path, registry: Path, stamp: str, choice: DeviceChoice) -> list[GpuStep]:
    """The GPU engines and the seed table's checkpoints, in the order they run."""
    jobs = str(os.cpu_count() or 2)
    kernels = {"MAX_JOBS": jobs, **({"TORCH_CUDA_ARCH_LIST": choice.cuda_archs()} if choice.cuda_archs() else {})}
    steps = [
        GpuStep("vllm-cuda venv", f"vLLM {VLLM_CUDA_VERSION} for CUDA in {VLLM_CUDA.root} (its own torch; several "
                "GB from PyPI; checked by importing vllm and seeing the GPU from its torch)",
                ((python, "-m", "backends.vllm.venv", "--cuda"),), VLLM_CUDA.is_ready),
        GpuStep("llama.cpp cuda build", "llama-server with ggml's CUDA backend for the cards' compute capability "
                "(nvcc and cuBLAS needed; 270-316 s with 16 cores on an H100 machine), proven by a smoke run "
                "with every layer on the GPU", ((python, "-m", "backends.llamacpp.build", "--flavor", "cuda"),),
                server_binary("cuda").is_file, {"SERVEBENCH_LLAMACPP_BUILD_JOBS": jobs}),
        _exllama_step(python, venv, stamp, "exllamav2", "0.3.2", "import exllamav2.ext", kernels,
                      "150 s on an H100 machine"),
        _exllama_step(python, venv, stamp, "exllamav3", "1.6.5", "from exllamav3.ext import exllamav3_ext", kernels,
                      "440 s, once over 12 min, on an H100 machine"),
    ]
    for name, target, needs, bits in CHECKPOINTS:
        naming = ("--bits", bits, "--name", name) if bits else ()
        steps.append(GpuStep(
            f"checkpoint {name}", f"bench quantize {SOURCE} to {target}, registered in models.yaml as {name}",
            ((python, "-m", "bench", "quantize", "--model", SOURCE, "--to", target, *naming),),
            _registered(registry, name), needs=needs))
    return steps


@dataclass
class GpuRunner:
    """Runs GPU steps, each apart: a failure is recorded (with its output's tail) and the next step goes on."""

    root: Path
    log_dir: Path
    results: dict[str, dict[str, object]] = field(default_factory=dict)

    def run(self, step: GpuStep) -> None:
        """Run ``step`` unless it is cached or the step it needs failed; record what happened."""
        started = time.monotonic()
        if step.needs is not None and self.results.get(step.needs, {}).get("status") == "failed":
            self._record(step, "failed", started, f"not run: it needs {step.needs}, which failed")
            return
        if step.done():
            self._record(step, "cached", started)
            return
        for cmd in step.commands:
            failure = self._run_logged(step, cmd)
            if failure is not None:
                if step.undo:
                    self._run_logged(step, step.undo)
                self._record(step, "failed", started, failure)
                return
        if step.marker is not None:
            step.marker.write_text(step.stamp)
        self._record(step, "ok", started)

    def _run_logged(self, step: GpuStep, cmd: Sequence[str]) -> str | None:
        """Run ``cmd``, echoing and logging its output; None on success, else the exit and the output's tail."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / (re.sub(r"[^A-Za-z0-9.-]+", "-", step.name) + ".log")
        print(f"[bootstrap] + {' '.join(cmd)}", flush=True)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        env = {**os.environ, **step.env}
        try:
            with log.open("a") as sink, subprocess.Popen(list(cmd), cwd=self.root, env=env, text=True,
                                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    sink.write(line)
                    if line.strip():
                        tail.append(line.rstrip())
                code = proc.wait()
        except OSError as exc:
            return f"`{cmd[0]}` could not start: {exc}"
        if code == 0:
            return None
        return f"`{' '.join(cmd)}` exited with code {code} (log: {log}):\n" + "\n".join(tail)

    def _record(self, step: GpuStep, status: str, started: float, reason: str | None = None) -> None:
        entry: dict[str, object] = {"status": status, "seconds": round(time.monotonic() - started, 1)}
        if reason is not None:
            entry["reason"] = reason
        self.results[step.name] = entry
        print(f"[bootstrap] GPU step {step.name}: {status}" + (f": {reason.splitlines()[0]}" if reason else ""),
              flush=True)

    def failed(self) -> dict[str, str]:
        """Each failed step's reason."""
        return {name: str(r.get("reason", "")) for name, r in self.results.items() if r["status"] == "failed"}

    def write(self, path: Path, choice: DeviceChoice) -> None:
        """The record: the device, and each step's status, seconds and (when it failed) reason."""
        record = {"device": choice.device, "why": choice.reason,
                  "gpus": choice.smi.describe() if choice.smi else None, "steps": self.results}
        path.write_text(json.dumps(record, indent=2) + "\n")
