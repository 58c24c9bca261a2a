"""docs/matrix.md documents every key the matrix schema accepts (so the guide cannot fall behind it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from bench.load.config import SweepSpec
from bench.run.schema import (
    EvalScenario,
    KVCacheScenario,
    LoadScenario,
    Matrix,
    OptionSet,
    PrefixProbe,
    ScheduleScenario,
    SpeculativeScenario,
    TraceScenario,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "matrix.md"


@pytest.mark.parametrize("model", [Matrix, OptionSet, LoadScenario, KVCacheScenario, PrefixProbe,
                                   SpeculativeScenario, EvalScenario, SweepSpec, TraceScenario, ScheduleScenario])
def test_every_schema_key_is_documented(model: type[BaseModel]) -> None:
    words = set(re.findall(r"[a-z_]+", DOC.read_text()))
    missing = [field for field in model.model_fields if field not in words]
    assert not missing, f"{model.__name__}: {missing} not in docs/matrix.md"
