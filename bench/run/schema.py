"""The matrix file: one pydantic schema validates ``bench run MATRIX.yaml`` and the built-in default.

A *cell* is one server configuration: a model on a backend with one resolved option set, under one seed.
Scenarios that need other server options (a KV-cache dtype, prefix caching, a speculative method) say so
with :meth:`variants`: each variant is the matrix's option set with a few options overridden, and becomes
its own cell. Scenarios that need no override share the option set's own cell (one server start).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backends.base import EngineOptions, KVCacheDtype
from backends.yamlfile import ConfigFileError, describe, read_yaml
from bench.api import Api
from bench.evals.config import EvalConfig, EvalOptions
from bench.load.arrivals import ConcurrencyArrival, PoissonArrival, ScheduleArrival, TraceArrival
from bench.load.config import LoadOptions, SweepSpec
from bench.load.workloads import MultiTurnWorkload, RandomWorkload, TraceWorkload, Workload

# One variant of a scenario: the engine options it overrides (``{}``: the option set as it is).
Variant = dict[str, Any]


class LoadPoint(BaseModel):
    """One load level: a fixed concurrency or a request rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0, description="requests/s, Poisson arrivals")

    @model_validator(mode="after")
    def _one(self) -> LoadPoint:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency or rate")
        return self

    def arrival(self) -> ConcurrencyArrival | PoissonArrival:
        """The arrival process of this load: closed-loop concurrency or Poisson at the rate."""
        if self.concurrency is not None:
            return ConcurrencyArrival(n=self.concurrency)
        assert self.rate is not None
        return PoissonArrival(rate=self.rate)

    @property
    def label(self) -> str:
        """``c8`` or ``r2.5``."""
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"


class _Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    def variants(self) -> list[Variant]:
        """Option overrides this scenario runs under; ``{}`` is the option set itself."""
        return [{}]


class LoadScenario(_Scenario, LoadOptions):
    """Fixed load points, or a sweep (``bench sweep``) up to the highest load that meets the SLO.

    Each point is a ``bench load`` run: the scenario inherits :class:`~bench.load.config.LoadOptions` (so every
    option is declared once, with ``bench load``'s flag help), with defaults for a matrix; the cell supplies the
    server, the seed and (at each point) the arrival process. ``requests_per_point`` is read as ``num_requests``.
    """

    kind: Literal["load"] = "load"
    name: str = "load"
    api: Api = "completions"
    workload: Workload = Field(default_factory=lambda: RandomWorkload(input_tokens=64, output_tokens=32))
    points: tuple[LoadPoint, ...] = (LoadPoint(concurrency=1), LoadPoint(concurrency=8))
    sweep: SweepSpec | None = Field(default=None, description="walk the load axis instead of fixed points")
    num_requests: int = Field(default=16, ge=1, validation_alias=AliasChoices("num_requests", "requests_per_point"),
                              description="measured requests per point (or sweep step), warm-up excluded")
    warmup: int = Field(default=1, ge=0, description="requests sent first at each point, left out of its summary")
    duration_s: float | None = Field(default=300.0, gt=0, description="upper bound per point")


class PrefixProbe(BaseModel):
    """Shared-prefix prompts against unique prompts of the same length, for the prefix-cache hit rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix_tokens: int = Field(default=256, ge=1)
    suffix_tokens: int = Field(default=32, ge=1)
    output_tokens: int = Field(default=8, ge=1)
    requests: int = Field(default=8, ge=2)
    concurrency: int = Field(default=1, ge=1, description="1: every request after the first can hit")


class KVCacheScenario(_Scenario):
    """Context length × KV-cache dtype × prefix caching.

    Each (dtype, prefix caching) pair is a server configuration (a cell). In each cell: the KV capacity in
    tokens and bytes as the engine reports it, TTFT/TPOT at each context length (one request at a time),
    the largest concurrency that fits at each length, peak memory, and with ``prefix`` the hit rate of a
    shared-prefix workload against unique prompts.
    """

    kind: Literal["kv-cache"] = "kv-cache"
    name: str = "kv-cache"
    api: Api = "completions"
    context_lengths: tuple[int, ...] = Field(default=(128, 512), min_length=1)
    output_tokens: int = Field(default=16, ge=2)
    requests_per_length: int = Field(default=4, ge=1)
    kv_cache_dtypes: tuple[KVCacheDtype, ...] = Field(default=("auto",), min_length=1)
    prefix_caching: tuple[bool, ...] = Field(default=(False,), min_length=1)
    prefix: PrefixProbe | None = Field(default_factory=PrefixProbe)

    def variants(self) -> list[Variant]:
        """One variant per (dtype, prefix caching) pair."""
        return [{"kv_cache_dtype": dtype, "prefix_caching": prefix}
                for dtype in self.kv_cache_dtypes for prefix in self.prefix_caching]


class SpeculativeScenario(_Scenario):
    """Speculative method × concurrency, against the same engine without speculation.

    ``workload`` defaults to repetitive text (a line repeated several times, continued by the model), the
    case where prompt lookup (ngram) can match; the ``none`` method is the baseline for the speed-up.
    """

    kind: Literal["speculative"] = "speculative"
    name: str = "speculative"
    api: Api = "completions"
    methods: tuple[str, ...] = Field(default=("none", "ngram"), min_length=1)
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    concurrencies: tuple[int, ...] = Field(default=(1, 4), min_length=1)
    workload: Workload | None = Field(default=None, description="None: built-in repetitive prompts")
    repeat_line_tokens: int = Field(default=24, ge=4, description="repetitive prompts: tokens per line")
    repeats: int = Field(default=4, ge=2, description="repetitive prompts: times the line appears")
    output_tokens: int = Field(default=48, ge=2)
    requests_per_point: int = Field(default=8, ge=1)
    warmup: int = Field(default=1, ge=0)

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        for method in methods:
            EngineOptions(speculative=method)  # same vocabulary and error as the engines' options
        if "none" not in methods:
            raise ValueError("methods must include 'none' (the baseline for the speed-up)")
        return methods

    def variants(self) -> list[Variant]:
        """One variant per method (``none`` is the baseline, with no draft length: it would do nothing)."""
        return [{"speculative": "none", "num_speculative_tokens": None} if method == "none"
                else {"speculative": method, "num_speculative_tokens": self.num_speculative_tokens}
                for method in self.methods]


# Documents an eval scenario evaluates unless the matrix says otherwise: enough that a difference of a few
# points is more than noise (issue #16); loglikelihood ARC is cheap (no generation), so it gets more.
DEFAULT_EVAL_LIMIT = 200
DEFAULT_ARC_LOGLIKELIHOOD_LIMIT = 500


class UnderLoad(LoadPoint):
    """Run the eval a second time while ``bench load`` holds the server at this load (MLPerf's accuracy mode).

    Greedy decoding should give the same answers under load; any difference is reported as a finding about
    the engine (batch-dependent numerics, a dropped request, a truncated reply).
    """

    workload: Workload = Field(default_factory=lambda: RandomWorkload(input_tokens=64, output_tokens=32))
    api: Api = "completions"
    settle_s: float = Field(default=2.0, ge=0, description="load runs this long before the eval starts")


class EvalScenario(_Scenario, EvalOptions):
    """A quality task through the same endpoint: ``bench eval``'s options (:class:`EvalOptions`, inherited, so
    each is declared once), with a default ``limit`` that follows the resolved mode."""

    kind: Literal["eval"] = "eval"
    name: str = "eval"
    limit: Annotated[int, Field(ge=1)] | Literal["all"] | None = Field(
        default=None, description=f"documents, a seeded sample; 'all': every document of the task; None: "
        f"{DEFAULT_ARC_LOGLIKELIHOOD_LIMIT} for ARC loglikelihood, else {DEFAULT_EVAL_LIMIT} (HumanEval has 164)")
    under_load: UnderLoad | None = Field(default=None, description="also run the eval under this load and "
                                         "report both scores")

    @model_validator(mode="after")
    def _consistent(self) -> EvalScenario:
        try:  # bench eval's own checks (e.g. --data on another task), at load time rather than mid-run
            self.eval_config("http://127.0.0.1", "model", 0)
        except ValidationError as exc:
            raise ValueError("; ".join(str(error["msg"]) for error in exc.errors())) from None
        return self

    def eval_config(self, url: str, model: str, seed: int, prompt_logprobs: bool | None = None) -> EvalConfig:
        """The ``bench eval`` config this scenario runs against one server (same names, same meaning).

        ``prompt_logprobs`` (the engine's capability, when known) resolves ``mode: auto`` for ARC; the default
        ``limit`` follows the resolved mode.
        """
        fields = self.model_dump(exclude={"kind", "name", "under_load"})
        config = EvalConfig.model_validate({"url": url, "model": model, "seed": seed, **fields})
        if prompt_logprobs is not None and config.wants_loglikelihood_probe():
            config = config.with_mode("loglikelihood" if prompt_logprobs else "generate")
        if self.limit is None:
            loglikelihood = config.is_arc and config.mode in ("auto", "loglikelihood") and config.api == "completions"
            limit = DEFAULT_ARC_LOGLIKELIHOOD_LIMIT if loglikelihood else DEFAULT_EVAL_LIMIT
            config = config.model_copy(update={"limit": limit})
        return config


def load_options(scenario: LoadOptions) -> dict[str, Any]:
    """The ``bench load`` options a scenario sets (the cell adds the server, the seed and the arrival)."""
    return {name: getattr(scenario, name) for name in LoadOptions.model_fields}


class TraceScenario(_Scenario, LoadOptions):
    """A production trace replayed against each cell (``bench load --workload trace``).

    The scenario is ``bench load``'s options (inherited from :class:`~bench.load.config.LoadOptions`, each declared
    once), its workload a trace sent at the trace's own times; the report shows its goodput over time.
    """

    kind: Literal["trace"] = "trace"
    name: str = "trace"
    workload: TraceWorkload
    num_requests: int | None = Field(default=None, ge=1, description="replay the trace's first N requests "
                                     "(None: all of them)")
    max_concurrency: int | None = Field(default=None, ge=1, description="cap in-flight requests")

    def arrival(self) -> TraceArrival:
        """The trace's own times (under the cap)."""
        return TraceArrival(max_concurrency=self.max_concurrency)


class ScheduleScenario(_Scenario, LoadOptions):
    """Load that changes over time against each cell (``bench load --rate-schedule``): ``bench load``'s options
    (inherited) and the rate schedule; the report names the latency knee, the lowest offered rate at which p99
    TTFT or TPOT broke the SLO."""

    kind: Literal["schedule"] = "schedule"
    name: str = "schedule"
    schedule: ScheduleArrival = Field(description="the arrival, e.g. {schedule: '0:1,30:2,60:4'} or "
                                      "{schedule: 'ramp:0:1,60:8', process: poisson}")
    workload: Workload = Field(default_factory=lambda: RandomWorkload(input_tokens=64, output_tokens=32))
    num_requests: int | None = Field(default=None, ge=1, description="None: the duration bounds the run")
    duration_s: float | None = Field(default=90.0, gt=0, description="the run's length; the last rate holds "
                                     "until then")

    def arrival(self) -> ScheduleArrival:
        """The schedule."""
        return self.schedule


class MultiTurnScenario(_Scenario, LoadOptions):
    """Multi-turn sessions against each cell (``bench load --workload multi-turn``): ``bench load``'s options
    (inherited, each declared once), a multi-turn workload, and the concurrent sessions of each point. With
    ``prefix_caching`` the scenario runs once per value, each a server of its own; the report shows TTFT by turn."""

    kind: Literal["multi-turn"] = "multi-turn"
    name: str = "multi-turn"
    workload: MultiTurnWorkload = Field(default_factory=lambda: MultiTurnWorkload(turns=4, user_tokens=64,
                                                                                  output_tokens=32))
    users: tuple[int, ...] = Field(default=(4,), min_length=1, description="concurrent sessions, one point each")
    num_requests: int | None = Field(default=32, ge=1, description="measured turns per point, warm-up excluded")
    duration_s: float | None = Field(default=300.0, gt=0, description="upper bound per point")
    prefix_caching: tuple[bool, ...] | None = Field(default=None, description="run under each value (a server "
                                                    "each); None: the option set's own")

    def variants(self) -> list[Variant]:
        """One variant per prefix-caching value, else the option set itself."""
        return [{}] if self.prefix_caching is None else [{"prefix_caching": p} for p in self.prefix_caching]


Scenario = Annotated[LoadScenario | KVCacheScenario | SpeculativeScenario | EvalScenario | TraceScenario
                     | ScheduleScenario | MultiTurnScenario, Field(discriminator="kind")]


class OptionSet(BaseModel):
    """A named set of engine options (``name`` appears in the report), for every model and backend or only some."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    options: EngineOptions = Field(default_factory=EngineOptions)
    models: tuple[str, ...] = Field(
        default=(), description="fnmatch globs over the matrix's models: the set makes cells only for the models "
        "one of them matches (e.g. an option set only one format needs); empty: every model")
    backends: tuple[str, ...] = Field(
        default=(), description="fnmatch globs over the matrix's backends: the set makes cells only for the "
        "backends one of them matches (e.g. batch 1 for an engine that cannot batch); empty: every backend")

    def applies_to(self, model: str, backend: str | None = None) -> bool:
        """Whether this set makes cells for ``model`` (a name of the matrix's ``models``) and, if given,
        ``backend`` (one of its ``backends``)."""
        return _matches(model, self.models) and (backend is None or _matches(backend, self.backends))


def _matches(name: str, globs: tuple[str, ...]) -> bool:
    """No globs match everything; otherwise one of them must match ``name``."""
    return not globs or any(fnmatch.fnmatchcase(name, glob) for glob in globs)


class QualityTarget(BaseModel):
    """How much quality a quantized entry may lose against its ``derived_from`` source (the report's verdict).

    The drop is measured on each eval task's per-document accuracy (ARC accuracy, SQuAD F1, GSM8K exact match,
    HumanEval pass@1), paired on the same documents. ``relative``: the drop as a fraction of the source's score
    (0.03: a source at 0.50 may fall to 0.485); otherwise in the metric's own units (0.03: three points of
    accuracy). An entry is *within target* when the whole 95% interval of its change lies above ``-max_drop``,
    *beyond target* when the whole interval lies below it, and *inconclusive* when the interval straddles it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_drop: float = Field(default=0.03, gt=0, description="largest acceptable drop (the research plan: < 3%)")
    relative: bool = Field(default=True, description="true: a fraction of the source's score; false: points of "
                           "the metric (accuracy 0-1)")

    def describe(self) -> str:
        """``relative drop < 3%`` or ``absolute drop < 0.030``."""
        if self.relative:
            return f"relative drop < {self.max_drop:.0%}"
        return f"absolute drop < {self.max_drop:.3f}"


class Matrix(BaseModel):
    """models × backends × option sets × scenarios, repeated over seeds.

    ``quality_target`` is the verdict's target for each quantized entry against its ``derived_from`` source;
    ``quality_reference`` names the bf16 models (in order of preference) that every other format, a models.yaml
    entry or an option set that quantizes at load (``quantization: fp8``), is compared with on the same eval
    (``bench.report.verdict``), and turns on the report's headline (``bench.report.headline``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "matrix"
    models: tuple[str, ...] = Field(min_length=1)
    backends: tuple[str, ...] = Field(min_length=1)
    option_sets: tuple[OptionSet, ...] = (OptionSet(),)
    scenarios: tuple[Scenario, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = (0,)
    headline_load: str | None = Field(
        default=None, description="the load point the seed table quotes, as 'scenario/point' (e.g. "
        "'load/c8'); default: the last point of the first load scenario")
    gpu_hour_usd: float | None = Field(default=None, ge=0, description="price for cost per 1M output tokens")
    server_timeout_s: float = Field(default=600.0, gt=0, description="how long a server may take to start")
    quality_target: QualityTarget = Field(
        default_factory=QualityTarget, description="the verdict column's target for each quantized entry against "
        "its derived_from source (default: a relative drop under 3%)")
    quality_reference: tuple[str, ...] = Field(
        default=(), description="the unquantized (bf16) models every other format's quality is compared with, in "
        "order of preference (e.g. the HF checkpoint, then the GGUF F16 for engines that cannot serve HF); the "
        "report then compares each eval with the reference's same eval on the same engine and options where it "
        "can, and heads the report with the best format per engine at the SLO (default: none, no comparison)")
    native_variants: bool = Field(
        default=False,
        description="serve each backend the variant of each model (itself or an entry derived from it) "
        "in the format that backend prefers, e.g. HF for transformers and GGUF for llama.cpp",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Matrix:
        for what, names in (("scenario", [s.name for s in self.scenarios]),
                            ("option set", [o.name for o in self.option_sets])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")
        return self

    @model_validator(mode="after")
    def _option_set_models(self) -> Matrix:
        for option_set in self.option_sets:
            for what, globs, names in (("models", option_set.models, self.models),
                                       ("backends", option_set.backends, self.backends)):
                for glob in globs:
                    if not any(fnmatch.fnmatchcase(name, glob) for name in names):
                        raise ValueError(f"option set {option_set.name!r}: {what} glob {glob!r} matches none of "
                                         f"the matrix's {what} ({', '.join(names)})")
        return self

    def headline(self) -> str | None:
        """``scenario/point`` of the load the seed table quotes."""
        if self.headline_load:
            return self.headline_load
        for scenario in self.scenarios:
            if isinstance(scenario, LoadScenario) and scenario.points and scenario.sweep is None:
                return f"{scenario.name}/{scenario.points[-1].label}"
        return None


class MatrixError(ValueError):
    """A matrix file is invalid."""


def load_matrix(path: Path) -> Matrix:
    """Read and validate a matrix YAML file; errors name the offending key."""
    try:
        data = read_yaml(path)
    except ConfigFileError as exc:
        raise MatrixError(f"matrix file {exc}") from None
    return validate_matrix(data, str(path))


def validate_matrix(data: Any, where: str = "matrix") -> Matrix:
    """Validate a parsed matrix; each error line names the key path (``unknown key 'scenarios.0.foo'``)."""
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        raise MatrixError(describe(exc, where)) from None
