"""``LoadConfig``: one typed description of a load run, shared by the CLI, YAML scenarios and Python."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from bench.api import Api
from bench.load.arrivals import Arrival, ConcurrencyArrival, TraceArrival
from bench.load.workloads import RandomWorkload, TraceWorkload, Workload
from bench.metrics import GOODPUT_TARGET, SLO

DEFAULT_REQUEST_TIMEOUT_S = 600.0
# Prompts prepared for a trace replay that no request count bounds: every request of the trace, up to this.
TRACE_MAX_REQUESTS = 10_000_000


class LoadOptions(BaseModel):
    """What to send, for how long, and what counts as good: a load run apart from its server, arrival process and
    seed. :class:`LoadConfig` adds those; a matrix's load scenario inherits these (each declared once)."""

    model_config = ConfigDict(extra="forbid")

    api: Api = "chat"
    workload: Workload = Field(default_factory=RandomWorkload)
    num_requests: int | None = Field(default=100, ge=1,
                                     description="measured requests, warm-up excluded (default 100 unless --duration)")
    duration_s: float | None = Field(default=None, gt=0, description="stop scheduling after this long")
    warmup: int = Field(default=0, ge=0, description="requests sent first and left out of the summary")
    slo: SLO = Field(default_factory=SLO)
    tokenizer: str | None = Field(default=None, description="path or models.yaml name; default: <model>-hf")
    force_output_len: bool = Field(default=True, description="send ignore_eos and min_tokens with max_tokens")
    logprobs_token_count: bool = Field(
        default=False, description="ask for logprobs to count tokens per chunk"
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Never written anywhere: excluded from every dump (load_config.json, reports) and masked in repr.
    api_key: SecretStr | None = Field(default=None, exclude=True, description="sent as a bearer token")
    request_timeout_s: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S, gt=0,
        description="per-request limit from the first send to the end of the stream, retries included (s)",
    )
    max_retries: int = Field(
        default=1, ge=0, le=8,
        description="resends, each over a new connection, of a request whose connection failed before any "
                    "response (a keep-alive connection the server had closed); counted in each record's attempts",
    )
    workers: int = Field(default=1, ge=1, le=64, description="client processes")
    prompt_pool: int = Field(
        default=2048, ge=1, description="prompts prepared when only duration bounds the run"
    )
    scrape: bool = True
    scrape_interval_s: float = Field(default=0.5, gt=0)
    gpu_peak_bandwidth_gbs: float | None = Field(
        default=None, gt=0, description="for MBU; default: GPU table"
    )
    model_bytes: int | None = Field(default=None, gt=0, description="weights read per decode step, for MBU")
    server_gpus: int = Field(default=1, ge=1, description="GPUs the server splits the model over (tensor × "
                             "pipeline parallel): MBU divides by their summed peak bandwidth")
    window_s: float = Field(default=5.0, gt=0, description="length of one window of the time series "
                            "(timeseries.json: rate, in-flight, latency, KV usage and queue per window)")


class LoadConfig(LoadOptions):
    """What to send, to which server, how fast, for how long, and what counts as good."""

    url: str = Field(description="server root or its /v1 base, e.g. http://127.0.0.1:8000")
    model: str = Field(description="model name sent in requests")
    arrival: Arrival = Field(default_factory=lambda: ConcurrencyArrival(n=1))
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _trace_times(cls, data: Any) -> Any:
        """A trace brings its own times and its own length: its arrival is ``trace`` and, unless a request
        count is given, every request of the trace is replayed."""
        if not isinstance(data, dict):
            return data
        workload = data.get("workload")
        kind = workload.get("kind") if isinstance(workload, dict) else getattr(workload, "kind", None)
        if kind != "trace":
            return data
        data = dict(data)
        data.setdefault("arrival", TraceArrival())
        data.setdefault("num_requests", None)
        return data

    @model_validator(mode="after")
    def _bounded(self) -> LoadConfig:
        trace = isinstance(self.workload, TraceWorkload)
        if trace != (self.arrival.kind == "trace"):
            raise ValueError("a trace workload sends at the trace's own times: give no other arrival (--rate, "
                             "--concurrency), and the trace arrival only with a trace workload")
        if self.num_requests is None and self.duration_s is None and not trace:
            raise ValueError("give num_requests or duration_s: every run is bounded")
        if self.workload.kind == "multi-turn" and self.api != "chat":
            raise ValueError("the multi-turn workload sends chat histories: give api chat")
        return self

    def key(self) -> str | None:
        """The API key in clear, for the request headers and nothing else (``None`` when not set)."""
        if self.api_key is None:
            return None
        return self.api_key.get_secret_value() or None

    @property
    def base_url(self) -> str:
        """The ``.../v1`` base."""
        root = self.url.rstrip("/")
        return root if root.endswith("/v1") else root + "/v1"

    @property
    def root_url(self) -> str:
        """Server root (where ``/metrics`` and ``/health`` live)."""
        root = self.url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root

    @property
    def endpoint(self) -> str:
        """Full URL of the completion endpoint used."""
        return self.base_url + ("/chat/completions" if self.api == "chat" else "/completions")

    def processes(self) -> int:
        """Client processes that run: ``workers``, but never more than requests may be in flight (each needs one).

        With ``--workers 4`` at concurrency 1, four processes of one user each would send four requests at once.
        """
        cap = self.arrival.in_flight_limit
        return self.workers if cap is None else min(self.workers, cap)

    def total_requests(self) -> int:
        """How many prompts to prepare (warm-up included)."""
        if self.num_requests is not None:
            return self.num_requests + self.warmup
        if isinstance(self.workload, TraceWorkload):
            return TRACE_MAX_REQUESTS
        return self.prompt_pool + self.warmup


class SweepMode(StrEnum):
    """The load axis a sweep walks."""

    rate = "rate"
    concurrency = "concurrency"


class SweepSpec(BaseModel):
    """How to walk the load axis."""

    model_config = ConfigDict(extra="forbid")

    mode: SweepMode = Field(default=SweepMode.rate, description="rate (Poisson) or concurrency")
    start: float = Field(default=1.0, gt=0, description="the first step's rate or concurrency")
    factor: float = Field(default=2.0, gt=1, description="each step multiplies the load by this")
    max_value: float = Field(default=1024.0, gt=0, description="the highest load tried")
    refine_steps: int = Field(default=2, ge=0, description="bisection steps between the last pass and first fail")
    goodput_target: float = Field(
        default=GOODPUT_TARGET, gt=0, le=1, description="fraction of requests meeting all SLOs"
    )
    saturation_ratio: float = Field(default=0.8, gt=0, le=1,
                                    description="rate mode: saturated when sustained < ratio x offered")


class RepeatSpec(BaseModel):
    """How often to run one load point, and how many whole runs to throw away first (``--repeats``)."""

    model_config = ConfigDict(extra="forbid")

    repeats: int = Field(default=1, ge=1, le=100,
                         description="measured runs of the load point, run i with seed + i; 2 or more report "
                                     "mean, std and a 95% interval of throughput, TTFT and TPOT")
    warmup_runs: int | None = Field(default=None, ge=0, le=10,
                                    description="whole runs sent first and left out of the spread (the first "
                                                "run after a server start is the slowest); default 1 with "
                                                "--repeats 2 or more, else 0")

    def warmups(self) -> int:
        """Warm-up runs to send: the given number, else 1 when repeating."""
        if self.warmup_runs is not None:
            return self.warmup_runs
        return 1 if self.repeats > 1 else 0

    @property
    def repeating(self) -> bool:
        """More than the single plain run of ``bench load``."""
        return self.repeats > 1 or self.warmups() > 0
