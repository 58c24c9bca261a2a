"""Record files that may have been gzipped to commit them: ``requests.jsonl`` read as ``requests.jsonl.gz``.

A run writes its records as plain JSONL, appended line by line. A report that is committed keeps the large ones
gzipped (``gzip -9 requests.jsonl``, ``samples.jsonl``, ``server_metrics.jsonl``); readers ask for the plain
name and get whichever of the two exists, so ``bench report`` and ``bench summarize`` recompute from either.
"""

from __future__ import annotations

import gzip
from pathlib import Path

GZ = ".gz"


def located(path: Path) -> Path:
    """``path`` where it exists, else its ``.gz`` twin where that exists, else ``path`` (so "not found" names
    the plain file)."""
    if path.exists():
        return path
    packed = path.with_name(path.name + GZ)
    return packed if packed.exists() else path


def exists(path: Path) -> bool:
    """Whether ``path`` or its ``.gz`` twin exists."""
    return located(path).exists()


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is the ``.gz`` twin; FileNotFoundError names the plain path."""
    found = located(path)
    return gzip.decompress(found.read_bytes()) if found.name.endswith(GZ) else found.read_bytes()
