"""`bench load --config FILE`: the file's fields hold unless a flag that makes them is given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import build_app
from tests.helpers import scripted_server


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def _load(url: str, config: Path, out: Path, *flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and the resolved config of one run."""
    args = ["load", "--url", url, "--model", "calibration", "--config", str(config), "--no-scrape",
            "--out", str(out), *flags]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    return summary, json.loads((out / "load_config.json").read_text())["config"]


def test_config_file_fields_hold_unless_a_flag_is_given(calib_url: str, tmp_path: Path) -> None:
    config = tmp_path / "load.yaml"
    config.write_text(yaml.safe_dump({
        "num_requests": 5, "arrival": {"kind": "concurrency", "n": 2}, "tokenizer": None,
        "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 6}, "slo": {"ttft_ms": 5000},
    }))
    summary, cfg = _load(calib_url, config, tmp_path / "file")
    assert summary["num_ok"] == 5 and summary["total_output_tokens"] == 5 * 6
    assert cfg["arrival"]["n"] == 2 and cfg["slo"]["ttft_ms"] == 5000
    summary, cfg = _load(calib_url, config, tmp_path / "flags", "--num-requests", "3", "--output-tokens", "4")
    assert summary["num_ok"] == 3 and summary["total_output_tokens"] == 3 * 4  # the flags given win
    assert cfg["arrival"]["n"] == 2 and cfg["slo"]["ttft_ms"] == 5000  # the rest still from the file
