"""Typed configuration and summary of one eval run (the CLI flags and ``bench run`` share these)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from bench.api import Api

TaskName = Literal["math-absdiff", "arc-challenge", "arc-easy", "squad", "humaneval"]
TASK_NAMES: tuple[str, ...] = ("math-absdiff", "arc-challenge", "arc-easy", "squad", "humaneval")

EvalMode = Literal["auto", "generate", "loglikelihood"]
NO_ANSWER_FLAG = 0.2  # a share of samples without an extractable answer above this is flagged
ARC_GENERATE_SHOTS = 5  # oe-eval's ARC MC format; at 0 shots the bundled instruct model answers nothing

# Generation budgets that fit each task's expected answer (a CoT solution, a letter, a span, a function).
DEFAULT_MAX_TOKENS: dict[str, int] = {
    "math-absdiff": 320,
    "arc-challenge": 8,
    "arc-easy": 8,
    "squad": 32,
    "humaneval": 384,
}


class EvalOptions(BaseModel):
    """What an eval runs and how: every option ``bench eval`` and a matrix's eval scenario share.

    Declared once, here: :class:`EvalConfig` adds the endpoint and the seed, ``bench eval``'s flags are
    generated from these fields, and :class:`bench.run.schema.EvalScenario` inherits them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskName = Field(description="math-absdiff | arc-challenge | arc-easy | squad | humaneval")
    limit: Annotated[int, Field(ge=1)] | Literal["all"] | None = Field(
        default=50, description="documents to evaluate, a seeded sample ('all' or None: every document)")
    shots: int | None = Field(default=None, ge=0, description="few-shot examples per prompt (default: 5 for ARC "
                              "generate in completion mode, else 0)")
    api: Api = "completions"
    mode: EvalMode = Field(default="auto", description="ARC only: auto (loglikelihood where the endpoint returns "
                           "prompt logprobs, else generate) | generate | loglikelihood; other tasks always generate")
    concurrency: int = Field(default=4, ge=1, le=1024, description="requests in flight at once")
    max_tokens: int | None = Field(default=None, ge=1, description="generation budget (default: per task)")
    stream: bool = Field(default=False, description="stream replies to measure TTFT as well")
    math_source: Literal["gsm8k", "math500"] = Field(default="gsm8k", description="math-absdiff: gsm8k | math500")
    data: Path | None = Field(default=None, description="math-absdiff: OpenMath-style JSONL (problem, "
                              "expected_answer)")
    allow_code_execution: bool = Field(default=False, description="humaneval: run generated code (sandboxed)")
    allow_weak_sandbox: bool = Field(
        default=False,
        validation_alias=AliasChoices("allow_weak_sandbox", "allow_network_in_sandbox"),
        description="humaneval: run the code even where the isolated sandbox (namespaces, private root) cannot "
        "be had, with only rlimits, a private temp folder and a timeout",
    )
    code_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    busy_retries: int = Field(default=4, ge=0, description="retries of a request refused with 429/503 (not a dead "
                              "engine's 503) or whose connection dropped")
    max_duration_s: float = Field(default=3600.0, gt=0, description="stop the whole eval after this many seconds")
    bootstrap_resamples: int = Field(default=1000, ge=10)


class EvalConfig(EvalOptions):
    """One eval of one task against one OpenAI-compatible endpoint."""

    url: str = Field(description="endpoint root or its /v1 base, e.g. http://127.0.0.1:8000")
    model: str = Field(description="model name to put in requests")
    seed: int = Field(default=0, description="sampling and few-shot seed")
    api_key: str | None = Field(default=None, exclude=True, repr=False, description="bearer token for the endpoint")
    # None here, as the tasks' load() takes it; 'all' is read as None
    limit: Annotated[int, Field(ge=1)] | None = Field(default=50, description="documents to evaluate, a seeded "
                                                      "sample (None: every document)")

    @field_validator("limit", mode="before")
    @classmethod
    def _all_documents(cls, limit: object) -> object:
        return None if limit == "all" else limit

    @field_validator("url")
    @classmethod
    def _v1_base(cls, url: str) -> str:
        url = url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        if self.mode == "loglikelihood" and not self.is_arc:
            raise ValueError("--mode loglikelihood is implemented for arc-challenge and arc-easy only")
        if self.mode == "loglikelihood" and self.api == "chat":
            raise ValueError("loglikelihood needs /v1/completions (echo + logprobs): use --completion")
        if self.data is not None and self.task != "math-absdiff":
            raise ValueError("--data (OpenMath JSONL) applies to --task math-absdiff only")
        if self.task == "humaneval" and self.shots:
            raise ValueError("humaneval is zero-shot")
        return self

    @property
    def is_arc(self) -> bool:
        """Whether the task is ARC (the only one with a loglikelihood mode)."""
        return self.task.startswith("arc-")

    def wants_loglikelihood_probe(self) -> bool:
        """``auto`` on ARC through the completion API: ask the endpoint whether it returns prompt logprobs."""
        return self.mode == "auto" and self.is_arc and self.api == "completions"

    def with_mode(self, mode: Literal["generate", "loglikelihood"]) -> EvalConfig:
        """This config with ``mode`` resolved (``auto`` replaced)."""
        return self.model_copy(update={"mode": mode})

    def task_mode(self) -> Literal["generate", "loglikelihood"]:
        """The mode the task runs in: ``auto`` that nothing resolved means generate."""
        return "loglikelihood" if self.mode == "loglikelihood" else "generate"

    def shot_count(self) -> int:
        """``shots``, or the task's default."""
        if self.shots is not None:
            return self.shots
        arc_generate = self.is_arc and self.task_mode() == "generate" and self.api == "completions"
        return ARC_GENERATE_SHOTS if arc_generate else 0

    def generation_budget(self) -> int:
        """``max_tokens`` or the task's default."""
        return self.max_tokens or DEFAULT_MAX_TOKENS[self.task]


class LatencyStats(BaseModel):
    """Client-side latencies of the eval's own requests, in seconds."""

    e2e_s: dict[str, float] = Field(default_factory=dict, description="send to last byte, per request")
    ttft_s: dict[str, float] = Field(default_factory=dict, description="send to first content (stream)")
    requests: int = 0
    errors: int = 0


class EvalSummary(BaseModel):
    """What ``eval_summary.json`` holds."""

    task: str
    model: str
    url: str
    api: str
    mode: str
    metric: str
    value: float | None
    higher_is_better: bool
    ci95: tuple[float, float] | None
    metrics: dict[str, float | None]
    n_samples: int
    n_errors: int
    no_answer_rate: float | None = Field(
        default=None, description="share of scored samples with no extractable answer (empty reply, no letter, "
        "no number)")
    no_answer_flag: bool = Field(default=False, description=f"no_answer_rate > {NO_ANSWER_FLAG:.0%}: the score "
                                 "measures the prompt or stop rule more than the model")
    mode_note: str | None = Field(default=None, description="how mode auto was resolved, and why")
    latency: LatencyStats
    wall_s: float
    sandbox: str | None = None
    samples_file: str
    config: dict[str, object]
