"""Typed run results: cell.json validates on the way in (bench run) and out (--resume, bench report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import build_app
from bench.report.tables import load_run
from bench.run.executor import read_cell
from bench.run.results import SCHEMA_VERSION, CellRecordError, new_record, parse_cell, read_cell_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "reports" / "examples" / "cpu-matrix", ROOT / "reports" / "tp-scaling-h200x2",
            ROOT / "reports" / "examples" / "quant-verdict"]
# The committed runs and the schema version they were written with (0: before records were versioned).
EXAMPLE_VERSIONS = {"cpu-matrix": SCHEMA_VERSION, "tp-scaling-h200x2": 0, "quant-verdict": SCHEMA_VERSION}
IDENTITY = {"cell_id": "transformers__m__default__s0", "model": "m", "backend": "transformers",
            "option_set": "default", "options": {}, "seed": 0, "scenario_names": ["load"]}


@pytest.mark.parametrize("run_dir", EXAMPLES, ids=lambda p: p.name)
def test_committed_example_runs_validate_unchanged(run_dir: Path) -> None:
    cells = sorted((run_dir / "cells").glob("*/cell.json"))
    assert cells
    for path in cells:
        record = read_cell_file(path)
        assert record.schema_version == EXAMPLE_VERSIONS[run_dir.name]  # an old version is accepted as it is
        assert record.as_dict() == json.loads(path.read_text())
    assert load_run(run_dir).problems is not None


@pytest.mark.parametrize("run_dir", EXAMPLES, ids=lambda p: p.name)
def test_bench_report_renders_the_committed_examples(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["report", str(run_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text().strip()


def _broken_run(tmp_path: Path, drop: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES[0], run)
    path = next(p for p in sorted((run / "cells").glob("*/cell.json")) if '"status": "ok"' in p.read_text())
    data = json.loads(path.read_text())
    scenario = next(iter(data["scenarios"].values()))
    points = scenario.get("points") or scenario.get("lengths")
    del next(iter(points.values()))[drop]
    path.write_text(json.dumps(data))
    return run


def test_a_report_of_a_cell_with_a_missing_field_names_it(tmp_path: Path) -> None:
    run = _broken_run(tmp_path, "ttft_ms")
    result = CliRunner().invoke(build_app(), ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "cell.json" in result.output and "ttft_ms" in result.output and "Field required" in result.output


def test_a_report_of_a_run_yaml_that_does_not_validate_names_the_field(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES[0], run)
    data = yaml.safe_load((run / "run.yaml").read_text())
    data["environment"]["gpus"] = [{"memory": "80 GiB"}]  # no name
    (run / "run.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(build_app(), ["report", str(run), "--out", str(tmp_path / "out")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "run.yaml is invalid" in result.output and "environment.gpus.0.name" in result.output


def test_resume_refuses_a_cell_record_it_cannot_read(tmp_path: Path) -> None:
    folder = tmp_path / "cell"
    folder.mkdir()
    (folder / "cell.json").write_text(json.dumps({**IDENTITY, "status": "ok"}))  # an ok cell without startup_s
    with pytest.raises(CellRecordError, match="startup_s"):
        read_cell(folder)
    (folder / "cell.json").write_text(json.dumps({"cell_id": "x", "status": "failed"}))
    with pytest.raises(CellRecordError, match="model: Field required"):
        read_cell(folder)


def test_records_carry_the_schema_version_and_a_newer_one_is_refused() -> None:
    record = new_record(**IDENTITY, status="skipped", reason="no")
    assert record.as_dict()["schema_version"] == SCHEMA_VERSION
    with pytest.raises(CellRecordError, match="newer"):
        parse_cell({**record.as_dict(), "schema_version": SCHEMA_VERSION + 1}, "cell.json")
    bad_scenario = {**IDENTITY, "status": "failed", "error": "x", "scenarios": {"load": {"kind": "load"}}}
    with pytest.raises(CellRecordError, match=r"scenarios\.load\.load\.points"):
        parse_cell(bad_scenario, "cell.json")


def _cell_with(kind: str, key: str = "kind") -> tuple[Path, dict[str, Any], str]:
    """The first committed example cell with a scenario of ``kind`` that has ``key``: path, data, scenario name."""
    for path in sorted((EXAMPLES[0] / "cells").glob("*/cell.json")):
        data = json.loads(path.read_text())
        for name, scenario in data.get("scenarios", {}).items():
            if scenario.get("kind") == kind and "status" not in scenario and scenario.get(key):
                return path, data, name
    raise AssertionError(f"no {kind} scenario in {EXAMPLES[0]}")


def test_nested_results_are_typed_so_a_renamed_key_names_its_field() -> None:
    """The report reads every nested result by attribute: the KV probe, a length's fit, an eval's summary."""
    path, data, name = _cell_with("kv-cache", "prefix")
    kv = data["scenarios"][name]
    kv["prefix"]["shared_prefix"] = kv["prefix"].pop("shared")
    with pytest.raises(CellRecordError, match=rf"scenarios\.{name}\.kv-cache\.prefix\.shared: Field required"):
        parse_cell(data, path)
    path, data, name = _cell_with("kv-cache")
    next(iter(data["scenarios"][name]["lengths"].values()))["max_concurrency_fit"] = {"kv": "many"}
    with pytest.raises(CellRecordError, match=r"max_concurrency_fit\.kv"):
        parse_cell(data, path)
    path, data, name = _cell_with("eval")
    data["scenarios"][name]["result"]["score"] = data["scenarios"][name]["result"].pop("value")
    with pytest.raises(CellRecordError, match=rf"scenarios\.{name}\.eval\.result\.value: Field required"):
        parse_cell(data, path)
