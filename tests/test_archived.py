"""Committed reports keep their large record files gzipped; every reader takes either form (backends.archived)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from backends import archived
from bench.load.records import read_records
from bench.load.runner import rebuild_summary
from bench.report.verdict import doc_scores
from bench.scrape import read_server_rows

CELL = Path(__file__).parent.parent / "reports" / "examples" / "cpu-matrix" / "cells" \
    / "vllm__smollm2-135m-instruct-hf__default__s0"


def _gzip(path: Path) -> None:
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()


def test_located_prefers_the_plain_file_and_names_it_when_neither_exists(tmp_path: Path) -> None:
    plain = tmp_path / "requests.jsonl"
    assert archived.located(plain) == plain and not archived.exists(plain)
    with pytest.raises(FileNotFoundError, match=r"requests\.jsonl"):
        archived.read_bytes(plain)
    (tmp_path / "requests.jsonl.gz").write_bytes(gzip.compress(b"gz\n"))
    assert archived.read_bytes(plain) == b"gz\n"
    plain.write_bytes(b"plain\n")  # both: the plain file (a run still appending) wins
    assert archived.read_bytes(plain) == b"plain\n"


def test_records_samples_and_scrapes_read_the_same_gzipped(tmp_path: Path) -> None:
    requests = next(CELL.glob("load/**/requests.jsonl"))
    samples = CELL / "arc" / "samples.jsonl"
    folder = tmp_path / "point"
    shutil.copytree(requests.parent, folder)
    shutil.copy(samples, tmp_path / "samples.jsonl")
    before = (read_records(folder / "requests.jsonl"), doc_scores(tmp_path / "samples.jsonl", "arc-easy"),
              read_server_rows(folder / "server_metrics.jsonl"))
    assert before[0] and before[1]
    for path in (folder / "requests.jsonl", tmp_path / "samples.jsonl", folder / "server_metrics.jsonl"):
        if path.exists():
            _gzip(path)
    after = (read_records(folder / "requests.jsonl"), doc_scores(tmp_path / "samples.jsonl", "arc-easy"),
             read_server_rows(folder / "server_metrics.jsonl"))
    assert after == before


def test_summarize_recomputes_a_gzipped_point_exactly(tmp_path: Path) -> None:
    requests = next(CELL.glob("load/**/requests.jsonl"))
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    shutil.copytree(requests.parent, plain)
    shutil.copytree(requests.parent, packed)
    for name in ("requests.jsonl", "server_metrics.jsonl"):
        if (packed / name).exists():
            _gzip(packed / name)
    assert rebuild_summary(packed).model_dump() == rebuild_summary(plain).model_dump()
