"""Build ``llama-server`` once from the llama.cpp tree that llama-cpp-python vendors.

The binary lands in ``cache_dir()/bin/llama.cpp-<version>-<cpu|cuda>/llama-server``. The build runs under
:func:`~backends.llamacpp.source.cache_lock` in a scratch folder beside its destination and is renamed into
place when it is complete, so parallel runs build once and never see half a binary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from backends.errors import BackendError
from backends.llamacpp.source import LLAMA_CPP_PYTHON_VERSION, cache_lock, llama_cpp_tree
from bench.paths import cache_dir

Flavor = Literal["cpu", "cuda"]
BINARY = "llama-server"
BUILD_JOBS = 2

# The server's Web UI is not needed, and its default provisioning downloads assets from Hugging Face.
_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)


class BuildError(BackendError):
    """``llama-server`` could not be built."""


def cuda_buildable() -> bool:
    """Whether the CUDA flavour can be built and run here: ``nvcc`` on PATH and a CUDA device for torch."""
    if shutil.which("nvcc") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def binary_dir(flavor: Flavor) -> Path:
    """Where the built binary of ``flavor`` lives."""
    return cache_dir() / "bin" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-{flavor}"


def server_binary(flavor: Flavor) -> Path:
    """Path of ``llama-server`` for ``flavor`` (it may not be built yet)."""
    return binary_dir(flavor) / BINARY


def cmake_flags(flavor: Flavor) -> list[str]:
    """The cmake configure flags for ``flavor``."""
    flags = list(_COMMON_FLAGS)
    if flavor == "cuda":
        flags.append("-DGGML_CUDA=ON")
    return flags


def _run(cmd: list[str], log: Path) -> None:
    with log.open("ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"{cmd[0]} failed with code {result.returncode} (full log: {log}):\n{tail}")


def _compile(tree: Path, build: Path, flavor: Flavor, log: Path) -> Path:
    _run(["cmake", "-S", str(tree), "-B", str(build), *cmake_flags(flavor)], log)
    _run(["cmake", "--build", str(build), "--target", BINARY, "-j", str(BUILD_JOBS)], log)
    built = build / "bin" / BINARY
    if not built.is_file():
        raise BuildError(f"the build finished but {built} is missing (log: {log})")
    return built


def _build(flavor: Flavor, progress: Callable[[str], None]) -> Path:
    dest = binary_dir(flavor)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tree = llama_cpp_tree()
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        log = stage / "build.log"
        progress(f"building {BINARY} ({flavor}) from {tree}; this takes several minutes; log: {log}")
        start = time.monotonic()
        built = _compile(tree, Path(tmp) / "build", flavor, log)
        seconds = time.monotonic() - start
        shutil.copy2(built, stage / BINARY)
        info = {"flavor": flavor, "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
                "cmake_flags": cmake_flags(flavor), "build_seconds": round(seconds, 1), "jobs": BUILD_JOBS}
        (stage / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        if dest.exists():  # a leftover without a binary, from a build that was interrupted by hand
            shutil.rmtree(dest)
        stage.replace(dest)
    progress(f"built {dest / BINARY} in {seconds:.0f}s")
    return dest / BINARY


def ensure_server(flavor: Flavor, progress: Callable[[str], None] = print) -> Path:
    """The ``llama-server`` binary of ``flavor``, building it on first use (idempotent, safe in parallel)."""
    binary = server_binary(flavor)
    if binary.is_file():
        return binary
    with cache_lock(f"llama-server-{flavor}"):
        if binary.is_file():
            return binary
        return _build(flavor, progress)


def main() -> None:
    """``python -m backends.llamacpp.build``: build the flavour this machine can run (used by the bootstrap)."""
    flavor: Flavor = "cuda" if cuda_buildable() else "cpu"
    print(ensure_server(flavor))


if __name__ == "__main__":
    main()
