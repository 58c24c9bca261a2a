"""Build llama.cpp once, from the tree llama-cpp-python vendors, for both ``llama-server`` and the Python binding.

One cmake build of ``vendor/llama.cpp`` gives ``llama-server``, the shared libraries (``libllama``, ``libggml``,
``libmtmd``) that llama-cpp-python loads, and ggml's CPU backend as run-time-selected variants
(``GGML_BACKEND_DL``, as llama.cpp's release builds do) instead of ``-march=native``: ggml loads the widest
variant the CPU runs. Which variants are built is chosen in :mod:`backends.llamacpp.cpu`.

The build runs under :func:`~backends.llamacpp.source.cache_lock` in a scratch folder beside its destination,
``cache_dir()/bin/llama.cpp-<version>-<flavor>-<scheme>/``. Before it is renamed into place, smoke runs
(:mod:`backends.llamacpp.smoke`) load the bundled GGUF through both consumers and generate a few tokens; a
CPU variant that faults there (SIGILL) is moved to ``disabled/`` and the runs repeat, and a build that still
fails is not installed. :func:`install_binding` then copies the libraries into the installed ``llama_cpp``
package, so pip never compiles llama.cpp a second time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from backends.errors import BackendError, describe_exit
from backends.llamacpp import cpu, smoke
from backends.llamacpp.source import LLAMA_CPP_PYTHON_VERSION, cache_lock, llama_cpp_tree
from backends.paths import cache_dir

Flavor = Literal["cpu", "cuda"]
BINARY = "llama-server"
BUILD_JOBS = 2  # the CPU build's parallelism (a shared 2-core box); the CUDA build uses every core
# Extra cmake configure flags, appended last (so they win), parsed like a shell line and recorded in build.json:
# e.g. where cuBLAS lives when the CUDA toolkit lacks it, or -DCMAKE_CUDA_ARCHITECTURES=90.
CMAKE_ARGS_ENV = "SERVEBENCH_LLAMACPP_CMAKE_ARGS"
JOBS_ENV = "SERVEBENCH_LLAMACPP_BUILD_JOBS"
_CUDA_ARCH_FLAG = "-DCMAKE_CUDA_ARCHITECTURES"
# Bump when the build's layout or flags change, so a build made the old way is not reused.
SCHEME = "dl1"
# The targets both consumers need: the server, and the libraries llama-cpp-python loads (libllama comes with
# the server; libmtmd is the binding's multimodal library).
TARGETS = (BINARY, "llama", "mtmd")
BUILD_INFO = "build.json"
# The libraries llama-cpp-python opens itself; ggml loads its backends (CPU variants, CUDA) from the build.
BINDING_LIBS = ("libllama", "libggml", "libggml-base", "libmtmd")
REBUILD_HINT = "Rebuild llama.cpp for this machine: python -m backends.llamacpp.build --rebuild"

# The server's Web UI is not needed, and its default provisioning downloads assets from Hugging Face.
_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
# A one-line filter in ggml's CMakeLists, so only the chosen CPU variants compile (each takes about a minute
# on two cores; all fourteen would take a quarter of an hour). Without SERVEBENCH_CPU_VARIANTS it is inert.
_VARIANT_FUNCTION = "function(ggml_add_cpu_backend_variant tag_name)\n"
_VARIANT_FILTER = ("    if (DEFINED SERVEBENCH_CPU_VARIANTS AND NOT tag_name IN_LIST SERVEBENCH_CPU_VARIANTS)"
                   "  # servebench\n        return()\n    endif()\n")


class BuildError(BackendError):
    """llama.cpp could not be built, or the build does not run on this machine."""


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
    """Where the build of ``flavor`` lives (server, libraries, CPU variants, ``build.json``)."""
    return cache_dir() / "bin" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-{flavor}-{SCHEME}"


def server_binary(flavor: Flavor) -> Path:
    """Path of ``llama-server`` for ``flavor`` (it may not be built yet)."""
    return binary_dir(flavor) / BINARY


def extra_cmake_args(environ: dict[str, str] | None = None) -> list[str]:
    """The flags in ``$SERVEBENCH_LLAMACPP_CMAKE_ARGS`` (shell-quoted words; empty when unset)."""
    env = os.environ if environ is None else environ
    try:
        return shlex.split(env.get(CMAKE_ARGS_ENV, ""))
    except ValueError as exc:
        raise BuildError(f"${CMAKE_ARGS_ENV} is not a valid shell-quoted list of flags: {exc}") from exc


def build_jobs(flavor: Flavor, environ: dict[str, str] | None = None) -> int:
    """How many compile jobs: ``$SERVEBENCH_LLAMACPP_BUILD_JOBS``, else 2 for CPU and every core for CUDA.

    The CUDA backend is some hundred ``nvcc`` compilations; a machine with a GPU is not the shared 2-core box.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(JOBS_ENV, "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise BuildError(f"${JOBS_ENV} must be a positive integer, not {wanted!r}")
        return int(wanted)
    return BUILD_JOBS if flavor == "cpu" else max(BUILD_JOBS, os.cpu_count() or BUILD_JOBS)


def parse_compute_caps(text: str) -> str | None:
    """``nvidia-smi --query-gpu=compute_cap`` output (``9.0`` per GPU) as a CUDA architecture list (``90``)."""
    archs: list[str] = []
    for line in text.split():
        major, dot, minor = line.strip().partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            return None
        if (arch := major + minor) not in archs:
            archs.append(arch)
    return ";".join(sorted(archs, key=int)) or None


def cuda_architectures() -> str | None:
    """The compute capabilities of the visible GPUs (``90`` on an H100), or None where nvidia-smi cannot say."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        result = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_compute_caps(result.stdout) if result.returncode == 0 else None


def cmake_flags(flavor: Flavor, variants: list[str] | None = None, backend_dir: Path | None = None,
                extra: list[str] | None = None, cuda_arch: str | None = None) -> list[str]:
    """The cmake configure flags for ``flavor``, building only ``variants`` of the CPU backend (all if None).

    ``backend_dir`` is where ggml looks for its backend libraries at run time (the build's final folder), so
    the Python binding, whose executable is the interpreter, finds them too. For CUDA, ``cuda_arch`` (the
    visible GPUs' compute capabilities) sets ``CMAKE_CUDA_ARCHITECTURES`` unless ``extra`` sets it; without
    either, ggml compiles its default list of architectures. ``extra`` comes last, so its flags win.
    """
    flags = list(_COMMON_FLAGS)
    extra = list(extra or [])
    if flavor == "cuda":
        flags.append("-DGGML_CUDA=ON")
        if cuda_arch and not any(f.split("=")[0].split(":")[0] == _CUDA_ARCH_FLAG for f in extra):
            flags.append(f"{_CUDA_ARCH_FLAG}={cuda_arch}")
    if variants is not None:
        flags.append(f"-DSERVEBENCH_CPU_VARIANTS={';'.join(variants)}")
    if backend_dir is not None:
        flags.append(f"-DGGML_BACKEND_DIR={backend_dir}")
    return flags + extra


def allow_variant_filter(tree: Path) -> None:
    """Add the ``SERVEBENCH_CPU_VARIANTS`` filter to ggml's variant function (idempotent)."""
    cmakelists = tree / "ggml" / "src" / "CMakeLists.txt"
    text = cmakelists.read_text()
    if _VARIANT_FILTER in text:
        return
    if text.count(_VARIANT_FUNCTION) != 1:
        raise BuildError(f"{cmakelists} no longer defines {_VARIANT_FUNCTION.strip()!r} once; "
                         "update backends/llamacpp/build.py for this llama.cpp version")
    cmakelists.write_text(text.replace(_VARIANT_FUNCTION, _VARIANT_FUNCTION + _VARIANT_FILTER))


def _run(cmd: list[str], log: Path) -> None:
    with log.open("ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"{cmd[0]} failed with code {result.returncode} (full log: {log}):\n{tail}")


def _compile(tree: Path, build: Path, flags: list[str], log: Path, jobs: int = BUILD_JOBS) -> Path:
    _run(["cmake", "-S", str(tree), "-B", str(build), *flags], log)
    _run(["cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs)], log)
    out = build / "bin"
    if not (out / BINARY).is_file():
        raise BuildError(f"the build finished but {out / BINARY} is missing (log: {log})")
    return out


def _stage_outputs(out: Path, stage: Path) -> None:
    """Copy the server and every shared library (with their version symlinks) into ``stage``."""
    shutil.copy2(out / BINARY, stage / BINARY)
    for lib in sorted(out.glob("lib*.so*")):
        shutil.copy2(lib, stage / lib.name, follow_symlinks=False)


def _smoke_all(stage: Path, flavor: Flavor, model: Path) -> list[smoke.SmokeResult]:
    results = [smoke.smoke_server(stage / BINARY, model, stage / "smoke-server.log", gpu_layers=flavor == "cuda")]
    if smoke.binding_installed(Path(sys.executable)):
        results.append(smoke.smoke_binding(stage, model, stage / "smoke-binding.log"))
    return results


def _failure_message(failed: smoke.SmokeResult) -> str:
    what = describe_exit(failed.what, failed.returncode, REBUILD_HINT) if failed.returncode else failed.what
    variant = f" with ggml's {failed.variant!r} CPU variant" if failed.variant else ""
    return (f"the llama.cpp build failed its smoke run ({failed.what}{variant}: {failed.detail}); "
            f"it was not installed.\n{what}\nlast lines of its log ({failed.log}):\n{failed.log_tail()}")


def prove_runs(stage: Path, flavor: Flavor, model: Path, progress: Callable[[str], None],
               smoke_all: Callable[[Path, Flavor, Path], list[smoke.SmokeResult]] = _smoke_all) -> dict[str, Any]:
    """Smoke-run the staged build; set aside each CPU variant that faults (SIGILL) until it runs, else raise.

    Returns what the runs found: the variant in use and the variants disabled, with why.
    """
    disabled: dict[str, str] = {}
    while True:
        results = smoke_all(stage, flavor, model)
        failed = next((r for r in results if not r.ok), None)
        if failed is None:
            return {"cpu_variant": results[0].variant, "disabled_variants": disabled,
                    "smoke": [r.what for r in results], "smoke_detail": [r.detail for r in results]}
        lib = stage / f"libggml-cpu-{failed.variant}.so"
        if failed.killed_by != "SIGILL" or failed.variant in (None, cpu.BASELINE) or not lib.exists():
            raise BuildError(_failure_message(failed))
        (stage / "disabled").mkdir(exist_ok=True)
        lib.replace(stage / "disabled" / lib.name)
        disabled[failed.variant] = f"{failed.what} was killed by SIGILL with it"
        progress(f"ggml's {failed.variant!r} CPU variant faults here (SIGILL): set aside; trying the next one")


def _build(flavor: Flavor, progress: Callable[[str], None]) -> Path:
    dest = binary_dir(flavor)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tree = llama_cpp_tree()
    allow_variant_filter(tree)
    variants = cpu.variants_for_this_machine()
    extra = extra_cmake_args()
    cuda_arch = cuda_architectures() if flavor == "cuda" else None
    flags = cmake_flags(flavor, variants, dest, extra, cuda_arch)
    jobs = build_jobs(flavor)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        log = stage / "build.log"
        progress(f"building llama.cpp ({flavor}; CPU variants: {', '.join(variants or ['all'])}) from {tree}; "
                 f"this takes several minutes; log: {log}")
        start = time.monotonic()
        _stage_outputs(_compile(tree, Path(tmp) / "build", flags, log, jobs), stage)
        seconds = time.monotonic() - start
        proven = prove_runs(stage, flavor, smoke.bundled_gguf(), progress)
        info = {"flavor": flavor, "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "scheme": SCHEME,
                "cmake_flags": flags, "extra_cmake_args": extra, "cuda_arch_detected": cuda_arch,
                "cpu_variants_built": variants or "all", **proven, "build_seconds": round(seconds, 1),
                "jobs": jobs}
        (stage / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        if dest.exists():  # a leftover, from a build that was interrupted by hand, or --rebuild
            shutil.rmtree(dest)
        stage.replace(dest)
    progress(f"built {dest} in {seconds:.0f}s; smoke runs passed on ggml's {proven['cpu_variant']!r} CPU variant")
    return dest / BINARY


def failed_marker(flavor: Flavor) -> Path:
    """Where a failed CUDA build leaves its reason (beside where the build would be)."""
    dest = binary_dir(flavor)
    return dest.with_name(dest.name + ".failed")


def _refuse_known_failure(flavor: Flavor) -> None:
    marker = failed_marker(flavor)
    if flavor == "cuda" and marker.is_file():
        reason = marker.read_text().strip().splitlines()[:3]
        raise BuildError(f"the CUDA build of llama.cpp failed on this machine before ({marker}), so it is not tried "
                         f"again for each server: {' '.join(reason)}. To try again: python -m backends.llamacpp.build "
                         "--flavor cuda")


def _build_recording_failure(flavor: Flavor, progress: Callable[[str], None]) -> Path:
    """:func:`_build`; a CUDA build that fails leaves its reason in :func:`failed_marker`, one that works clears it.

    A CUDA build fails for reasons of the machine (no nvcc or cuBLAS, a toolkit the driver cannot run) that the
    next server start would meet again after minutes of compiling; a CPU build failure stops the bootstrap.
    """
    marker = failed_marker(flavor)
    try:
        built = _build(flavor, progress)
    except Exception as exc:
        if flavor == "cuda":
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{exc}\n")
        raise
    marker.unlink(missing_ok=True)
    return built


def ensure_server(flavor: Flavor, progress: Callable[[str], None] = print, rebuild: bool = False,
                  retry_failed: bool = False) -> Path:
    """The ``llama-server`` binary of ``flavor``, building it on first use (idempotent, safe in parallel).

    Where a CUDA build failed before, this raises at once with that reason unless ``rebuild`` or ``retry_failed``
    (the build command sets it), so a matrix does not compile again for every llama.cpp cell.
    """
    binary = server_binary(flavor)
    if binary.is_file() and not rebuild:
        return binary
    if not (rebuild or retry_failed):
        _refuse_known_failure(flavor)
    with cache_lock(f"llama-server-{flavor}"):
        if binary.is_file() and not rebuild:
            return binary
        return _build_recording_failure(flavor, progress)


def binding_lib_dir() -> Path | None:
    """``llama_cpp/lib`` of the installed llama-cpp-python (found without loading it), or None."""
    found = importlib.util.find_spec("llama_cpp")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / "lib"


def install_binding(flavor: Flavor, progress: Callable[[str], None] = print) -> Path | None:
    """Put this build's libraries into the installed llama-cpp-python, replacing any it came with.

    ggml finds the CPU variants in the build folder (``GGML_BACKEND_DIR``), so only the libraries the
    binding opens itself are copied. Returns the binding's library folder, or None where it is not installed.
    """
    lib_dir = binding_lib_dir()
    if lib_dir is None:
        progress("llama-cpp-python is not installed here: only llama-server was built")
        return None
    build = binary_dir(flavor)
    stamp = lib_dir / "servebench-build.json"
    info = (build / BUILD_INFO).read_text()
    if stamp.is_file() and stamp.read_text() == info:
        return lib_dir
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    lib_dir.mkdir(parents=True)
    for lib in sorted(build.glob("lib*.so*")):
        if lib.name.split(".so")[0] in BINDING_LIBS:
            shutil.copy2(lib, lib_dir / lib.name, follow_symlinks=False)
    stamp.write_text(info)
    progress(f"llama-cpp-python now loads the build in {build}")
    return lib_dir


def main(argv: list[str] | None = None) -> None:
    """``python -m backends.llamacpp.build [--rebuild]``: build the flavour this machine runs (the bootstrap's step)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build again even if a build exists")
    parser.add_argument("--flavor", choices=["cpu", "cuda"], help="default: cuda where nvcc and a GPU exist")
    args = parser.parse_args(argv)
    flavor: Flavor = args.flavor or ("cuda" if cuda_buildable() else "cpu")
    try:
        print(ensure_server(flavor, rebuild=args.rebuild, retry_failed=True))
        install_binding(flavor)
    except (BuildError, smoke.SmokeSetupError) as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
