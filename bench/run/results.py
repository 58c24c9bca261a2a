"""Typed results of ``bench run``: what a cell's ``cell.json`` holds (:class:`CellRecord`) and what the run's
``run.yaml`` holds (:class:`RunFile`), written by the executor and read back by ``--resume`` and ``bench report``.

Every reader validates a cell through :class:`CellRecord`, so a renamed or missing key is an error that names
the file and the field, never an empty "–" in a report. A record carries :data:`SCHEMA_VERSION`; records
written before it existed (no ``schema_version``: version 0, such as the committed examples under
``reports/``) have the same shape and are accepted as they are. Each model allows extra keys, so that a
reader of this version can still open a record a later version added a key to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from backends.base import EngineOptions
from backends.yamlfile import describe
from bench.evals.config import EvalSummary
from bench.metrics import LoadSummary
from bench.metrics.timeseries import Knee, WindowStats
from bench.run.schema import Matrix

SCHEMA_VERSION = 1
CELL_FILE = "cell.json"
RUN_FILE = "run.yaml"
FINAL = ("ok", "failed", "skipped")


class CellRecordError(ValueError):
    """A ``cell.json`` that does not hold a cell record of this schema (the message names the field)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class KVCapacity(_Open):
    """The KV capacity the engine reports (:class:`bench.run.probes.KVInfo`); None: not reported."""

    capacity_tokens: int | None = None
    kv_bytes: float | None = None
    source: str | None = None
    tokens_per_gib: float | None = None


class KVFit(_Open):
    """Requests of one context length the KV cache holds at once (``kv``), and that capped by max_batch."""

    kv: int | None = None
    served: int | None = None


class LoadPoint(LoadSummary):
    """One ``bench load`` run inside a scenario: its summary plus where its files are and the server's peak RSS.

    Scenarios add their own keys: a sweep step's ``passed``/``saturated``, a speculative point's
    ``concurrency``, a context length's ``max_concurrency_fit``.
    """

    dir: str
    rss_peak_gib: float | None = None
    passed: bool | None = None
    saturated: bool | None = None
    concurrency: int | None = None
    max_concurrency_fit: KVFit | None = None


class LoadResult(_Open):
    """A load scenario: fixed points or a sweep (``best``: its highest passing load)."""

    kind: Literal["load"]
    mode: str
    best: float | None = None
    points: dict[str, LoadPoint]


class PrefixResult(_Open):
    """The prefix-cache probe: shared-prefix prompts against unique prompts of the same length."""

    shared: LoadPoint
    unique: LoadPoint


class KVCacheResult(_Open):
    """KV capacity, latency against context length, and the prefix-cache probe (``shared``/``unique``)."""

    kind: Literal["kv-cache"]
    kv: KVCapacity
    max_batch: int
    lengths: dict[str, LoadPoint]
    prefix: PrefixResult | None = None


class SpeculativeResult(_Open):
    """This cell's speculative method at each concurrency."""

    kind: Literal["speculative"]
    method: str
    points: dict[str, LoadPoint]


class UnderLoadResult(_Open):
    """The same eval run while ``bench load`` held the server at ``load``, compared with the idle run."""

    load: str
    dir: str
    result: EvalSummary
    load_summary: LoadSummary
    delta: float | None
    changed_answers: int
    compared: int


class EvalResult(_Open):
    """An eval's summary, and with ``under_load`` the same eval run beside ``bench load``."""

    kind: Literal["eval"]
    result: EvalSummary
    rss_peak_gib: float | None = None
    under_load: UnderLoadResult | None = None


class TimelineResult(_Open):
    """A run whose load changes over time: its point, its time series (:mod:`bench.metrics.timeseries`) and, for a
    rate schedule, the latency knee."""

    arrival: str = Field(description="the arrival as bench load describes it, e.g. schedule=0:1,30:2")
    point: LoadPoint
    window_s: float
    windows: list[WindowStats]
    knee: Knee | None = None


class TraceResult(TimelineResult):
    """A replayed trace."""

    kind: Literal["trace"]


class ScheduleResult(TimelineResult):
    """A rate schedule."""

    kind: Literal["schedule"]


class MultiTurnResult(_Open):
    """Multi-turn sessions: one point per number of concurrent sessions (each point's ``turns`` holds TTFT/TPOT
    by turn, its ``sessions`` the sessions achieved against the target)."""

    kind: Literal["multi-turn"]
    points: dict[str, LoadPoint]


class FailedScenario(_Open):
    """A scenario that raised; the cell went on with the next one."""

    status: Literal["failed"]
    kind: str | None = None
    error: str


class SkippedScenario(_Open):
    """A scenario the engine cannot serve (e.g. loglikelihood without prompt logprobs); nothing was sent."""

    status: Literal["skipped"]
    reason: str


def _scenario_tag(data: Any) -> str | None:
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    return status if status in ("failed", "skipped") else data.get("kind")


ScenarioResult = Annotated[
    Annotated[LoadResult, Tag("load")] | Annotated[KVCacheResult, Tag("kv-cache")]
    | Annotated[SpeculativeResult, Tag("speculative")] | Annotated[EvalResult, Tag("eval")]
    | Annotated[TraceResult, Tag("trace")] | Annotated[ScheduleResult, Tag("schedule")]
    | Annotated[MultiTurnResult, Tag("multi-turn")]
    | Annotated[FailedScenario, Tag("failed")] | Annotated[SkippedScenario, Tag("skipped")],
    Discriminator(_scenario_tag),
]


class CellRecord(_Open):
    """One cell of a matrix: which model, backend, options and seed, how it ended, and each scenario's result."""

    schema_version: int = Field(default=0, description="0: written before the schema was versioned")
    cell_id: str
    model: str
    backend: str
    option_set: str
    base_option_set: str | None = None
    options: EngineOptions
    seed: int
    scenario_names: list[str]
    status: Literal["ok", "failed", "skipped"]
    reason: str | None = None
    error: str | None = None
    previous_errors: list[str] = Field(default_factory=list)
    startup_s: float | None = None
    wall_s: float | None = None
    model_format: str | None = None
    rss_peak_gib: float | None = None
    kv: KVCapacity | None = None
    scenarios: dict[str, ScenarioResult] = Field(default_factory=dict)

    @field_validator("options", mode="before")
    @classmethod
    def _old_options(cls, options: Any) -> Any:
        return upgrade_options(options)

    @model_validator(mode="after")
    def _known_version(self) -> CellRecord:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is newer than this servebench reads "
                             f"({SCHEMA_VERSION}); upgrade servebench")
        if self.status == "ok" and self.startup_s is None:
            raise ValueError("an ok cell needs startup_s (its server started)")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON data, with only the keys it was given (what ``cell.json`` holds)."""
        return self.model_dump(mode="json", exclude_unset=True)


def upgrade_options(options: Any) -> Any:
    """Engine options as written before ``num_speculative_tokens`` became optional: each option set then carried
    the old default (4) even without speculation, which is now refused, so that written default is dropped."""
    if isinstance(options, dict) and options.get("speculative", "none") == "none" \
            and options.get("num_speculative_tokens") == 4:
        return {name: value for name, value in options.items() if name != "num_speculative_tokens"}
    return options


def new_record(**fields: Any) -> CellRecord:
    """A record of this schema version from the executor's fields (validated: a bad field raises)."""
    return CellRecord.model_validate({"schema_version": SCHEMA_VERSION, **fields})


def parse_cell(data: Any, source: Path | str) -> CellRecord:
    """Validate one cell's data; :class:`CellRecordError` names ``source`` and each bad or missing field."""
    try:
        return CellRecord.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}"
                             for e in exc.errors())
        raise CellRecordError(f"{source} is not a cell record of schema {SCHEMA_VERSION}: {problems}") from None


def read_cell_file(path: Path) -> CellRecord:
    """The validated record in ``path`` (a ``cell.json``); :class:`CellRecordError` when it is not one."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CellRecordError(f"{path} is not JSON: {exc}") from None
    return parse_cell(data, path)


# ---- run.yaml ---------------------------------------------------------------------------------


class RunFileError(ValueError):
    """A ``run.yaml`` that does not hold a run's record (the message names the field)."""


class Gpu(_Open):
    """One GPU as ``nvidia-smi`` named it."""

    name: str
    memory: str | None = None
    driver: str | None = None


class Environment(_Open):
    """What a run ran on (:func:`bench.run.environment.capture`); a field not captured is None."""

    python: str | None = None
    platform: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    gpus: list[Gpu] = Field(default_factory=list)
    packages: dict[str, str] = Field(default_factory=dict)
    engine_venvs: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    git_dirty: bool = False


class ModelLineage(_Open):
    """A served model as models.yaml held it when the run began (:func:`bench.run.executor.model_lineage`)."""

    format: str | None = None
    derived_from: str | None = None
    recipe: dict[str, Any] | None = None
    weight_bytes: int | None = None

    @property
    def load_time(self) -> bool:
        """Quantized when the engine loads it: no weight files of its own."""
        return bool((self.recipe or {}).get("load_time"))


def _upgrade_matrix(matrix: Any) -> Any:
    """A matrix as written before a schema change (:func:`upgrade_options` in each option set)."""
    if isinstance(matrix, dict):
        for option_set in matrix.get("option_sets") or []:
            if isinstance(option_set, dict) and "options" in option_set:
                option_set["options"] = upgrade_options(option_set["options"])
    return matrix


class Resume(_Open):
    """One ``bench run --resume``: when, what it ran again, its environment, and what it changed."""

    resumed_unix: float | None = None
    only: list[str] = Field(default_factory=list)
    retried_failed: list[str] = Field(default_factory=list)
    unskipped: list[str] = Field(default_factory=list, description="cells recorded as skipped that this resume "
                                 "could run (the model now exists, the engine is installed) or skips for "
                                 "another reason now")
    environment: Environment | None = None
    matrix: Matrix | None = Field(default=None, description="the resumed matrix, where it differs from the run's")
    models: dict[str, ModelLineage] = Field(default_factory=dict)

    @field_validator("matrix", mode="before")
    @classmethod
    def _old_matrix(cls, matrix: Any) -> Any:
        return _upgrade_matrix(matrix)


class RunFile(_Open):
    """A run folder's ``run.yaml``: the resolved matrix and the environment (written by ``bench run``, each
    resume appended), validated wherever it is read (``--resume``, ``bench report``)."""

    run_id: str | None = None
    created_unix: float | None = None
    matrix: Matrix
    environment: Environment | None = None
    hub_models: dict[str, dict[str, str]] = Field(default_factory=dict)
    models: dict[str, ModelLineage] = Field(default_factory=dict)
    resumes: list[Resume] = Field(default_factory=list)

    @field_validator("matrix", mode="before")
    @classmethod
    def _old_matrix(cls, matrix: Any) -> Any:
        return _upgrade_matrix(matrix)

    def lineage(self) -> dict[str, ModelLineage]:
        """The models the run recorded: at creation, then each resume's additions."""
        found = dict(self.models)
        for resume in self.resumes:
            for name, entry in resume.models.items():
                found.setdefault(name, entry)
        return found


def read_run_file(run_dir: Path) -> RunFile | None:
    """The validated ``run.yaml`` of a run folder, or None without one; :class:`RunFileError` names the field
    that does not validate."""
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        return RunFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise RunFileError(describe(exc, path)) from None
    except yaml.YAMLError as exc:
        raise RunFileError(f"{path} is not valid YAML: {exc}") from None
