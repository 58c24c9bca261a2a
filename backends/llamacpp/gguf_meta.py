"""Read scalar metadata from a GGUF header without mapping its tensors.

``gguf.GGUFReader`` parses every tensor descriptor and builds numpy views for each (17 s for the 100 MB
bundled model on the shared 2-core box); the launcher needs one integer from the header, so this reads
the key/value section only, skipping arrays, and stops before the tensor table.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str | None


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


def _read(fh: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    value: int | float | bool = struct.unpack(fmt, data)[0]
    return value


def _read_string(fh: BinaryIO) -> str:
    length = int(_read(fh, "<Q"))
    return fh.read(length).decode("utf-8", errors="replace")


def _skip(fh: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        fh.seek(int(_read(fh, "<Q")), 1)
    elif vtype == _ARRAY:
        etype, count = int(_read(fh, "<I")), int(_read(fh, "<Q"))
        if etype in _SCALARS:
            fh.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
        else:
            for _ in range(count):
                _skip(fh, etype)
    elif vtype in _SCALARS:
        fh.seek(struct.calcsize(_SCALARS[vtype]), 1)
    else:
        raise GGUFError(f"unknown GGUF value type {vtype}")


def _read_value(fh: BinaryIO, vtype: int) -> Scalar:
    if vtype == _STRING:
        return _read_string(fh)
    if vtype in _SCALARS:
        return _read(fh, _SCALARS[vtype])
    _skip(fh, vtype)
    return None


def read_metadata(path: Path) -> dict[str, Scalar]:
    """The header's key/value pairs; arrays (the vocabulary, merges) are skipped and given as ``None``."""
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        version = int(_read(fh, "<I"))
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is too old")
        _read(fh, "<Q")  # tensor count
        n_kv = int(_read(fh, "<Q"))
        meta: dict[str, Scalar] = {}
        for _ in range(n_kv):
            key = _read_string(fh)
            meta[key] = _read_value(fh, int(_read(fh, "<I")))
        return meta


def context_length(path: Path) -> int:
    """The model's training context (``<architecture>.context_length``)."""
    meta = read_metadata(path)
    key = f"{meta.get('general.architecture')}.context_length"
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GGUFError(f"{path} has no integer {key}")
    return value
