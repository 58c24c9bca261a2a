"""What the locustfile needs to know, as locust custom arguments, and the prompt file it can read.

The arguments are registered on locust's parser (so they show in the web UI, work headless, and can
come from ``LOCUST_*`` environment variables or a locust config file), then validated into one
:class:`LocustSettings`. The workload is the same pydantic ``Workload`` that ``bench load`` uses;
``--workload-config`` names a YAML/JSON file holding either a workload mapping (``kind: random ...``)
or a whole ``bench load --config`` file, whose ``workload`` (and ``seed``/``tokenizer``, where
the flags leave them unset) are used.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from bench.load.workloads import Prompt, RandomWorkload, Workload

# Without --max-requests, this many prompts are prepared and cycled.
DEFAULT_PROMPT_POOL = 2048
# Set by the master at test start, forwarded to workers with the other custom arguments.
WORKERS_DEST = "bench_workers"
# The environment variable --api-key reads (bench load --engine locust passes the key through it).
API_KEY_ENV = "OPENAI_API_KEY"


class LocustSettings(BaseModel):
    """The locustfile's configuration (one per locust process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default="", description="empty: the first id of GET /v1/models (see fill_model)")
    api: Literal["chat", "completions"] = "chat"
    workload: Workload = Field(default_factory=RandomWorkload)
    prompts_file: Path | None = Field(default=None, description="prompts prepared by bench load")
    tokenizer: str | None = None
    seed: int = 0
    max_requests: int | None = Field(default=None, ge=1, description="measured requests, all users")
    warmup: int = Field(default=0, ge=0)
    records: Path | None = Field(default=None, description="RequestRecord JSONL appended per request")
    run_id: str = "locust"
    force_output_len: bool = True
    logprobs_token_count: bool = False
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    request_timeout_s: float = Field(default=600.0, gt=0)
    workers: int = Field(default=1, ge=1, description="processes sharing the request bound")

    @property
    def path(self) -> str:
        """Request path of the endpoint used."""
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    @property
    def limit(self) -> int | None:
        """Requests to send in all, warm-up included (``None``: until locust stops)."""
        return None if self.max_requests is None else self.max_requests + self.warmup


def add_arguments(parser: Any) -> None:
    """Register the custom arguments on locust's ``LocustArgumentParser``."""
    add = parser.add_argument  # not a group: only the parser knows include_in_web_ui/is_secret
    add("--model", default="", env_var="LOCUST_MODEL",
        help="model name sent in requests (default: the first id of GET /v1/models at test start)")  # fmt: skip
    add("--api", choices=["chat", "completions"], default="chat", env_var="LOCUST_API")
    add(
        "--workload-config",
        default="",
        env_var="LOCUST_WORKLOAD_CONFIG",
        help="YAML/JSON: a workload mapping or a bench load --config file (default: random 128/128)",
    )
    add("--tokenizer", default="", env_var="LOCUST_TOKENIZER", help="for exact prompt lengths")
    add("--seed", type=int, default=0, env_var="LOCUST_SEED")
    add(
        "--max-requests",
        type=int,
        default=0,
        env_var="LOCUST_MAX_REQUESTS",
        help="stop after this many measured requests over all users and workers (0: no bound)",
    )
    add("--warmup", type=int, default=0, env_var="LOCUST_WARMUP", help="requests left out of the metrics")
    add("--records", default="", env_var="LOCUST_RECORDS", help="append a RequestRecord JSONL line per request")
    add(
        "--prompts-file",
        default="",
        env_var="LOCUST_PROMPTS_FILE",
        include_in_web_ui=False,
        help="prompts JSONL written by bench load --engine locust",
    )
    add("--run-id", default="locust", env_var="LOCUST_RUN_ID", include_in_web_ui=False)
    add(
        "--no-ignore-eos",
        action="store_true",
        default=False,
        env_var="LOCUST_NO_IGNORE_EOS",
        help="do not send ignore_eos/min_tokens",
    )
    add("--api-key", default="", env_var=API_KEY_ENV, is_secret=True)
    add("--request-timeout", type=float, default=600.0, env_var="LOCUST_REQUEST_TIMEOUT")
    add("--bench-workers", dest=WORKERS_DEST, type=int, default=1, include_in_web_ui=False,
        help="set by the master: how many processes share --max-requests")  # fmt: skip


def settings_from_options(options: Any) -> LocustSettings:
    """Validate locust's parsed options (an ``argparse.Namespace``) into :class:`LocustSettings`."""
    loaded = _read_mapping(Path(options.workload_config)) if options.workload_config else {}
    workload = loaded.get("workload", loaded) if loaded else {"kind": "random"}
    return LocustSettings(
        model=options.model,
        api=options.api,
        workload=TypeAdapter(Workload).validate_python(workload),
        prompts_file=Path(options.prompts_file) if options.prompts_file else None,
        tokenizer=options.tokenizer or loaded.get("tokenizer"),
        seed=options.seed or int(loaded.get("seed", 0)),
        max_requests=options.max_requests or None,
        warmup=options.warmup,
        records=Path(options.records) if options.records else None,
        run_id=options.run_id,
        force_output_len=not options.no_ignore_eos,
        api_key=options.api_key or None,
        request_timeout_s=options.request_timeout,
        workers=max(int(getattr(options, WORKERS_DEST, 1) or 1), 1),
    )


def fill_model(options: Any, host: str | None, timeout_s: float = 30.0) -> str | None:
    """Without ``--model``, set ``options.model`` to the first model the server at ``host`` lists.

    Returns the id it found, or ``None`` when ``--model`` was given. Raises ``RuntimeError`` (saying to
    give ``--model``) when there is no host or ``GET <host>/v1/models`` fails or lists nothing.
    """
    if options.model:
        return None
    if not host:
        raise RuntimeError("no --model and no --host: give --host (and --model, or let /v1/models name it)")
    options.model = discover_model(host, options.api_key or None, timeout_s)
    return str(options.model)


def discover_model(host: str, api_key: str | None, timeout_s: float = 30.0) -> str:
    """The first id of ``GET <host>/v1/models`` (``host`` is the server root, as locust's ``--host``)."""
    url = host.rstrip("/") + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            ids = [str(card["id"]) for card in json.load(resp)["data"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # URLError/HTTPError are OSErrors
        raise RuntimeError(f"no --model given and GET {url} failed ({exc}); give --model") from exc
    if not ids:
        raise RuntimeError(f"no --model given and GET {url} lists no model; give --model")
    return ids[0]


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"--workload-config {path}: {exc}") from exc
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"--workload-config {path} must hold a mapping (a workload or a LoadConfig)")
    return data


def write_prompts(path: Path, prompts: list[Prompt]) -> None:
    """Write prompts as JSONL, so locust processes send exactly what ``bench load`` prepared."""
    lines = (
        json.dumps({"text": p.text, "output_tokens": p.output_tokens, "input_tokens": p.input_tokens,
                    "exact": p.exact, "tag": p.tag})
        for p in prompts
    )
    path.write_text("".join(line + "\n" for line in lines))


def read_prompts(path: Path) -> list[Prompt]:
    """Inverse of :func:`write_prompts`."""
    with path.open(encoding="utf-8") as fh:
        return [Prompt(**json.loads(line)) for line in fh if line.strip()]
