"""Production traces: arrival times with input and output lengths, read in their published schemas.

- **azure** (Azure/AzurePublicDataset, the LLM inference traces of 2023 and 2024): CSV with the header
  ``TIMESTAMP,ContextTokens,GeneratedTokens``; ``TIMESTAMP`` is a wall-clock time such as
  ``2023-11-16 18:15:46.6805900`` (100 ns ticks; the 2024 files may add ``+00:00``).
- **burstgpt** (HPMLL/BurstGPT): CSV with ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``;
  ``Timestamp`` is seconds from the trace's start. Columns are read by name, so the newer files' extra
  ``Session ID`` and ``Elapsed time`` columns are fine. Rows with ``Response tokens`` 0 are the trace's failed
  requests and are skipped.
- **mooncake** (kvcache-ai/Mooncake): JSONL objects ``{"timestamp": ms, "input_length", "output_length",
  "hash_ids"}``; each hash id names one block of :data:`MOONCAKE_BLOCK_TOKENS` tokens, and two requests that
  share leading ids share that prefix.

Every trace is rebased so that its first request is at 0 s and sorted by time (stable, so simultaneous
requests keep the file's order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

TraceFormat = Literal["azure", "burstgpt", "mooncake"]
MOONCAKE_BLOCK_TOKENS = 512
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


class TraceError(ValueError):
    """A trace file that does not hold the schema it was read as (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of a trace: when (s from the first request), its lengths, and its shared blocks."""

    at_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def detect_format(path: Path) -> TraceFormat:
    """The format of ``path``: JSON lines are Mooncake's; a CSV header names Azure's or BurstGPT's columns."""
    with path.open(encoding="utf-8") as fh:
        first = fh.readline().strip()
    if first.startswith("{"):
        return "mooncake"
    header = next(csv.reader([first]), [])
    if all(col in header for col in AZURE_COLUMNS):
        return "azure"
    if all(col in header for col in BURSTGPT_COLUMNS):
        return "burstgpt"
    raise TraceError(f"{path}: cannot tell the trace format from its first line {first[:120]!r}; "
                     "give --trace-format azure, burstgpt or mooncake")


def read_trace(path: Path, fmt: TraceFormat | None = None) -> list[TraceRow]:
    """Every request of the trace in ``path``, sorted by time and rebased to start at 0 s."""
    if not path.exists():
        raise FileNotFoundError(f"trace file {path} not found")
    fmt = fmt or detect_format(path)
    reader = {"azure": _azure, "burstgpt": _burstgpt, "mooncake": _mooncake}[fmt]
    rows = sorted(reader(path), key=lambda r: r.at_s)
    if not rows:
        raise TraceError(f"{path} holds no requests (read as {fmt})")
    t0 = rows[0].at_s
    return [TraceRow(r.at_s - t0, r.input_tokens, r.output_tokens, r.hash_ids) for r in rows]


def schedule(rows: list[TraceRow], time_scale: float = 1.0, max_duration_s: float | None = None) -> list[TraceRow]:
    """The rows with their times multiplied by ``time_scale``, cut to those before ``max_duration_s``."""
    out = [TraceRow(r.at_s * time_scale, r.input_tokens, r.output_tokens, r.hash_ids) for r in rows]
    return out if max_duration_s is None else [r for r in out if r.at_s <= max_duration_s]


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)} (header {reader.fieldnames})")
        return [(line, row) for line, row in enumerate(reader, start=2) if any(row.values())]


def _int(path: Path, line: int, value: object, what: str) -> int:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: {what} is not a number: {value!r}") from None


def _azure(path: Path) -> list[TraceRow]:
    out = []
    for line, row in _csv_rows(path, AZURE_COLUMNS):
        try:
            at = datetime.fromisoformat(row["TIMESTAMP"].strip()).timestamp()
        except ValueError:
            raise TraceError(f"{path}:{line}: TIMESTAMP is not a date and time: {row['TIMESTAMP']!r}") from None
        out.append(TraceRow(at, _int(path, line, row["ContextTokens"], "ContextTokens"),
                            _int(path, line, row["GeneratedTokens"], "GeneratedTokens")))
    return out


def _burstgpt(path: Path) -> list[TraceRow]:
    out = []
    for line, row in _csv_rows(path, BURSTGPT_COLUMNS):
        response = _int(path, line, row["Response tokens"], "Response tokens")
        if response == 0:
            continue  # a failed request of the trace
        try:
            at = float(row["Timestamp"])
        except ValueError:
            raise TraceError(f"{path}:{line}: Timestamp is not a number: {row['Timestamp']!r}") from None
        out.append(TraceRow(at, _int(path, line, row["Request tokens"], "Request tokens"), response))
    return out


def _mooncake(path: Path) -> list[TraceRow]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
                row = TraceRow(float(obj["timestamp"]) / 1e3, int(obj["input_length"]), int(obj["output_length"]),
                               tuple(int(h) for h in obj.get("hash_ids") or ()))
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}:{line}: not a Mooncake trace record ({type(exc).__name__}: {exc})") from None
            out.append(row)
    return out
