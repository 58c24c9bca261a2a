"""Run one eval: load the task, send every document through the endpoint, score, summarize.

``samples.jsonl`` gets one line per document as soon as it is scored (a killed run keeps what it did);
``eval_summary.json`` holds the metrics, a bootstrap 95% CI of the primary metric, and the latencies
of the very requests that produced the answers. Concurrency, request count (``limit``) and total time
(``max_duration_s``) are bounded. A failed request is data (``error`` in its sample), not an exception;
setup problems (missing data, code execution not allowed) raise :class:`EvalSetupError`, and so does
an endpoint that refuses what the eval needs (:class:`EndpointUnsupportedError`, at its first refusal).
A busy server (429, 503) or a dropped connection is retried with backoff; an endpoint that answers that its
engine is dead stops the run at once (:class:`EndpointDeadError`), keeping the samples already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from bench.evals.client import CallResult, EchoIgnoredError, EndpointClient
from bench.evals.config import NO_ANSWER_FLAG, EvalConfig, EvalSummary, LatencyStats
from bench.evals.sandbox import SandboxInfo, SandboxUnavailableError, probe_sandbox
from bench.evals.scoring import bootstrap_ci, percentiles
from bench.evals.tasks import build_task
from bench.evals.tasks.base import Choices, Prompt, Scored, Task

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "eval_summary.json"
BUSY_STATUS = (429, 503)
BUSY_BACKOFF_S = 0.5
# How a server says its engine is gone for good: our server's error code, or words to that effect.
DEAD_ENGINE_CODES = frozenset({"engine_dead"})
_DEAD_ENGINE_WORDS = re.compile(r"\bengine\b.*\b(died|dead)\b", re.IGNORECASE | re.DOTALL)


class EvalSetupError(RuntimeError):
    """The eval cannot start; the message says what to change."""


class EndpointUnsupportedError(EvalSetupError):
    """The endpoint refused a request in a way every other request would repeat; the run stops."""


class EndpointDeadError(RuntimeError):
    """The endpoint answered that its engine is dead: no later request can succeed, so the run stopped."""


def _server_message(exc: BaseException) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message": ...}}``), else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc)


def dead_engine_reason(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` says the endpoint's engine is dead, else None.

    That is a 503, or an error event inside a stream (an ``openai.APIError`` with a body but no status),
    whose body has the code ``engine_dead`` (servebench's server) or a message saying the engine died or is
    dead. A 503 without such words (llama-server's "Loading model", a full queue) is transient.
    """
    body = getattr(exc, "body", None)
    if getattr(exc, "status_code", None) not in (503, None) or not isinstance(body, dict):
        return None
    message = _server_message(exc)
    if body.get("code") not in DEAD_ENGINE_CODES and not _DEAD_ENGINE_WORDS.search(message):
        return None
    return f"the endpoint's engine is dead ({message}); every later request would fail the same way"


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed if sent again: a busy server (429, 503) or a dropped connection.

    A timeout is not retried (the request already had its whole budget), nor is a dead engine's 503.
    """
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return False
    if isinstance(exc, openai.APIConnectionError):
        return True
    return getattr(exc, "status_code", None) in BUSY_STATUS and dead_engine_reason(exc) is None


def unsupported_reason(exc: BaseException, request: Prompt | Choices) -> str | None:
    """What to tell the user when ``exc`` means the endpoint cannot serve this eval at all, else None.

    A server without prompt logprobs either refuses ``echo=true`` (newer llama-server: HTTP 400 "Only no
    echo is supported") or ignores it (the llama-server servebench builds: no logprobs in the answer). A
    loglikelihood eval would fail each of its samples the same way, so the first such answer ends it.
    """
    if not isinstance(request, Choices):
        return None
    if isinstance(exc, EchoIgnoredError):
        what = "ignores echo=true (its answer has no prompt logprobs)"
    elif getattr(exc, "status_code", None) == 400 and "echo" in _server_message(exc).lower():
        what = f"refuses echo=true with logprobs (HTTP 400: {_server_message(exc)})"
    else:
        return None
    return (
        f"the endpoint {what}; --mode loglikelihood needs the prompt's own logprobs to score each choice. "
        "llama-server does not return them: use --mode generate there, or a server that does (bench serve, vLLM)"
    )


class SampleWriter:
    """Appends one JSON line per finished sample and flushes it at once."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    @classmethod
    def create(cls, out_dir: Path) -> SampleWriter:
        """A writer on a fresh ``out_dir/samples.jsonl`` (the folder is created)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        return cls((out_dir / SAMPLES_FILE).open("w", encoding="utf-8"))

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def write(self, record: dict[str, Any]) -> None:
        """Write and flush one record."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()


def _prompt_record(request: Prompt | Choices, config: EvalConfig) -> Any:
    if isinstance(request, Choices):
        return {"context": request.context, "continuations": list(request.continuations)}
    return request.chat_messages() if config.api == "chat" else request.completion_text()


def _sample_record(
    index: int, doc_id: str, prompt: Any, result: CallResult | None, scored: Scored | None, error: str | None
) -> dict[str, Any]:
    reply = result.reply if result else None
    output: Any = None
    if reply is not None:
        output = list(reply.choice_logprobs) if reply.choice_logprobs else reply.text
    return {
        "index": index,
        "doc_id": doc_id,
        "prompt": prompt,
        "output": output,
        "extracted": scored.extracted if scored else None,
        "gold": scored.gold if scored else None,
        "score": scored.score if scored else None,
        "fields": scored.fields if scored else {},
        "e2e_s": result.e2e_s if result else None,
        "ttft_s": result.ttft_s if result else None,
        "prompt_tokens": result.prompt_tokens if result else None,
        "completion_tokens": result.completion_tokens if result else None,
        "error": error,
    }


class WeightedGate:
    """At most ``capacity`` sequences in flight; a request takes one slot per prompt it carries.

    A loglikelihood request sends every choice as its own prompt, and servers admit per sequence, so
    ``--concurrency`` bounds sequences, not HTTP requests. A request takes all its slots at once (no
    partial holds, hence no deadlock); one wider than the gate takes the whole gate.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, slots: int) -> AsyncIterator[None]:
        """Wait for ``slots`` free slots, hold them for the block."""
        slots = min(slots, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= slots)
            self._free -= slots
        try:
            yield
        finally:
            async with self._changed:
                self._free += slots
                self._changed.notify_all()


class _Run:
    """State of one eval run (kept off module level)."""

    def __init__(self, config: EvalConfig, task: Task[Any], client: EndpointClient) -> None:
        self.config, self.task, self.client = config, task, client
        self.scored: list[Scored] = []
        self.results: list[CallResult] = []
        self.errors = 0

    async def one(self, index: int, doc: Any, gate: WeightedGate) -> dict[str, Any]:
        request = self.task.to_request(doc)
        prompt = _prompt_record(request, self.config)
        async with gate.hold(len(request.continuations) if isinstance(request, Choices) else 1):
            try:
                result = await self._send(request)
            except EndpointDeadError:
                raise
            except Exception as exc:  # any failed request is recorded, the run goes on
                reason = unsupported_reason(exc, request)
                if reason is not None:  # ... unless every other request would fail the same way
                    raise EndpointUnsupportedError(reason) from exc
                self.errors += 1
                return _sample_record(index, doc.id, prompt, None, None, f"{type(exc).__name__}: {exc}")
        scored = await self.task.score(doc, result.reply)
        self.results.append(result)
        self.scored.append(scored)
        return _sample_record(index, doc.id, prompt, result, scored, None)

    async def _send(self, request: Prompt | Choices) -> CallResult:
        """One call; a transient failure (:func:`is_transient`) is retried a few times with backoff, others
        are not, and a dead engine raises :class:`EndpointDeadError` at once.

        The latency recorded is that of the attempt that produced the answer.
        """
        for attempt in range(self.config.busy_retries + 1):
            try:
                if isinstance(request, Choices):
                    return await self.client.loglikelihood(request)
                return await self.client.generate(request, self.config.api)
            except Exception as exc:
                dead = dead_engine_reason(exc)
                if dead is not None:
                    raise EndpointDeadError(dead) from exc
                if not is_transient(exc) or attempt == self.config.busy_retries:
                    raise
                await asyncio.sleep(BUSY_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    async def all(self, docs: list[Any], writer: SampleWriter) -> int:
        gate = WeightedGate(self.config.concurrency)
        pending = [asyncio.ensure_future(self.one(i, doc, gate)) for i, doc in enumerate(docs)]
        done = 0
        try:
            async with asyncio.timeout(self.config.max_duration_s):
                for next_done in asyncio.as_completed(pending):
                    writer.write(await next_done)
                    done += 1
        except TimeoutError:
            pass  # the summary reports how many documents finished
        except EndpointDeadError as exc:
            raise EndpointDeadError(f"{exc}. The eval stopped after {done} of {len(docs)} samples; those are "
                                    f"kept in {SAMPLES_FILE}. Run the eval again once the server is back.") from exc
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return done


def _latency(results: list[CallResult], errors: int) -> LatencyStats:
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    return LatencyStats(
        e2e_s=percentiles([r.e2e_s for r in results]),
        ttft_s=percentiles(ttfts),
        requests=len(results) + errors,
        errors=errors,
    )


def no_answer_rate(scored: list[Scored]) -> float | None:
    """Share of scored samples whose reply held no extractable answer (``extracted`` is None)."""
    return sum(s.extracted is None for s in scored) / len(scored) if scored else None


# A question every causal LM can be asked: only whether the endpoint returns its prompt logprobs matters.
_PROBE = Choices("Question: What is one plus one?\nAnswer:", (" two",))


async def resolve_mode(config: EvalConfig, client: EndpointClient) -> tuple[EvalConfig, str | None]:
    """Resolve ``mode: auto`` for ARC: loglikelihood if one probe request gets prompt logprobs, else generate.

    Any other failure of the probe (a busy or unreachable server) keeps loglikelihood: the run then records
    those failures per sample as usual.
    """
    if not config.wants_loglikelihood_probe():  # other tasks, and chat, always generate
        chat_arc = config.is_arc and config.mode == "auto"
        note = "auto: generate (loglikelihood needs the completion API)" if chat_arc else None
        return config.with_mode(config.task_mode()), note
    try:
        await client.loglikelihood(_PROBE)
    except Exception as exc:
        reason = unsupported_reason(exc, _PROBE)
        if reason is not None:
            return config.with_mode("generate"), f"auto: generate, because {reason}"
    return config.with_mode("loglikelihood"), "auto: loglikelihood (the endpoint returns prompt logprobs)"


def _summarize(
    config: EvalConfig, task: Task[Any], run: _Run, wall_s: float, sandbox: SandboxInfo | None, out_dir: Path
) -> EvalSummary:
    metrics = task.aggregate(run.scored) if run.scored else {}
    primary = task.primary_metric

    def statistic(sample: Any) -> float | None:
        return task.aggregate(sample)[primary]

    ci = bootstrap_ci(run.scored, statistic, resamples=config.bootstrap_resamples, seed=config.seed)
    no_answer = no_answer_rate(run.scored)
    return EvalSummary(
        task=config.task,
        model=config.model,
        url=config.url,
        api=config.api,
        mode=config.mode,
        metric=primary,
        value=metrics.get(primary),
        higher_is_better=task.higher_is_better,
        ci95=ci,
        metrics=metrics,
        n_samples=len(run.scored),
        n_errors=run.errors,
        no_answer_rate=no_answer,
        no_answer_flag=no_answer is not None and no_answer > NO_ANSWER_FLAG,
        latency=_latency(run.results, run.errors),
        wall_s=wall_s,
        sandbox=sandbox.describe() if sandbox else None,
        samples_file=str(out_dir / SAMPLES_FILE),
        config=config.model_dump(mode="json"),
    )


def _sandbox_for(config: EvalConfig) -> SandboxInfo | None:
    """The probed sandbox for humaneval (refusing without opt-in or isolation); None for other tasks."""
    sandbox = None
    if config.task == "humaneval":
        if not config.allow_code_execution:
            raise EvalSetupError(
                "humaneval executes model-written code; pass --allow-code-execution to opt in "
                "(it runs in a sandboxed subprocess: see docs/evals.md)"
            )
        try:
            sandbox = probe_sandbox(allow_weak=config.allow_weak_sandbox)
        except SandboxUnavailableError as exc:
            raise EvalSetupError(f"humaneval: {exc}") from exc
    return sandbox


async def arun_eval(config: EvalConfig, out_dir: Path) -> EvalSummary:
    """Async form of :func:`run_eval`, for callers that already run an event loop."""
    client = EndpointClient(
        config.url,
        config.model,
        api_key=config.api_key,
        timeout_s=config.request_timeout_s,
        stream=config.stream,
    )
    try:
        return await _run_with(config, client, out_dir)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _run_with(config: EvalConfig, client: EndpointClient, out_dir: Path) -> EvalSummary:
    sandbox = _sandbox_for(config)  # refuses (humaneval without a sandbox) before any request is sent
    config, mode_note = await resolve_mode(config, client)
    config = config.model_copy(update={"shots": config.shot_count()})  # the summary records what ran
    task = build_task(config, sandbox)
    try:
        docs = task.load(config.limit, config.seed)
    except (OSError, ValueError) as exc:
        raise EvalSetupError(f"cannot load {config.task}: {exc}") from exc
    writer = SampleWriter.create(out_dir)
    run = _Run(config, task, client)
    start = time.perf_counter()
    try:
        await run.all(docs, writer)
    finally:
        writer.close()
    summary = _summarize(config, task, run, time.perf_counter() - start, sandbox, out_dir)
    summary = summary.model_copy(update={"mode_note": mode_note})
    _write_summary(summary, out_dir)
    return summary


def _write_summary(summary: EvalSummary, out_dir: Path) -> None:
    (out_dir / SUMMARY_FILE).write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")


def run_eval(config: EvalConfig, out_dir: Path) -> EvalSummary:
    """Run ``config``'s eval and write ``samples.jsonl`` and ``eval_summary.json`` under ``out_dir``."""
    return asyncio.run(arun_eval(config, out_dir))
