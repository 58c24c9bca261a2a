"""The llama.cpp sources vendored in llama-cpp-python's sdist, fetched once into the cache.

They provide ``convert_hf_to_gguf.py`` (with its matching ``gguf-py``) and the tree that
``llama-server`` is built from, at exactly the version the Python bindings use.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.paths import cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


class SourceError(RuntimeError):
    """The llama.cpp sources could not be fetched."""


def source_root() -> Path:
    """Folder holding the extracted ``vendor/llama.cpp`` tree."""
    return cache_dir() / "src" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive file lock in the cache, so parallel processes prepare things once."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archives = list(dest.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise SourceError(f"could not download the llama-cpp-python sdist: {result.stderr.strip()[-2000:]}")
    return archives[0]


def llama_cpp_tree() -> Path:
    """``vendor/llama.cpp`` of the sdist, downloading and extracting it on first use."""
    root = source_root()
    tree = root / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    with cache_lock("llama-cpp-source"):
        if (tree / "convert_hf_to_gguf.py").is_file():
            return tree
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            archive = _download_sdist(Path(tmp))
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            extracted = next(Path(tmp).glob("llama_cpp_python-*/"))
            root.parent.mkdir(parents=True, exist_ok=True)
            if root.exists():
                shutil.rmtree(root)
            extracted.rename(root)
    return tree


def convert_script() -> tuple[Path, Path]:
    """``(convert_hf_to_gguf.py, gguf-py folder)`` from the vendored tree."""
    tree = llama_cpp_tree()
    return tree / "convert_hf_to_gguf.py", tree / "gguf-py"
