"""``kind: eval`` scenarios of ``bench run``: the task through the cell's endpoint, idle and, with
``under_load``, again while ``bench load`` holds the server at a given load.

The idle eval is the score. The loaded one runs the same documents with the same greedy decoding beside a
:func:`bench.load.runner.run_load_async` run in the same event loop; the load starts ``settle_s`` before the
eval and is cancelled when the eval ends, and its summary is rebuilt from the records it wrote. The record
keeps both summaries, the difference of the primary metric and how many documents got another answer: a
non-zero count is a finding about the engine (greedy decoding should not depend on the batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends import registry as backends
from backends.errors import BackendError
from bench.evals.config import EvalConfig, EvalSummary
from bench.evals.runner import SAMPLES_FILE, arun_eval, run_eval
from bench.load.config import LoadConfig
from bench.load.runner import rebuild_summary, run_load_async
from bench.metrics import LoadSummary
from bench.run.cells import scenario_skip_reason
from bench.run.schema import EvalScenario, UnderLoad

if TYPE_CHECKING:
    from bench.run.scenarios import CellRun

LOAD_PROMPT_POOL = 64
LOAD_START_TIMEOUT_S = 300.0


def engine_prompt_logprobs(backend: str) -> bool | None:
    """Whether ``backend`` returns prompt logprobs (``echo``), or None when that is unknown here."""
    try:
        return backends.capabilities(backend).prompt_logprobs
    except BackendError:
        return None


def run_eval_scenario(scenario: EvalScenario, run: CellRun) -> dict[str, Any]:
    """The task through the endpoint; the eval's own summary, and with ``under_load`` the loaded one beside it.

    An eval the engine cannot serve (loglikelihood without prompt logprobs) is recorded as skipped, with
    the reason, and no request is sent; it carries no ``kind``, so the report has no result to show.
    """
    backend = run.handle.spec.backend
    reason = scenario_skip_reason(backend, scenario)
    if reason is not None:
        run.say(f"{scenario.name} · skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    run.check_alive()
    config = scenario.eval_config(run.handle.url, run.handle.model, run.seed, engine_prompt_logprobs(backend))
    run.say(f"{scenario.name} · {scenario.task} ({config.mode}, {config.limit or 'all'} documents)")
    out = run.cell_dir / scenario.name
    idle = run_eval(config, out)
    record: dict[str, Any] = {"kind": "eval", "result": idle.model_dump(mode="json"),
                              "rss_peak_gib": run.memory.take_peak()}
    if scenario.under_load is not None:
        run.check_alive()
        run.say(f"{scenario.name} · {scenario.task} under load {scenario.under_load.label}")
        record["under_load"] = eval_under_load(scenario.under_load, config, run, out, idle)
    return record


def eval_under_load(spec: UnderLoad, config: EvalConfig, run: CellRun, out: Path,
                    idle: EvalSummary) -> dict[str, Any]:
    """The same eval while ``bench load`` holds the server at ``spec``; compared with the ``idle`` run in ``out``."""
    folder = out / f"under-load-{spec.label}"
    load_config = run.config(api=spec.api, workload=spec.workload, arrival=spec.arrival(), requests=1,
                             duration_s=config.max_duration_s + spec.settle_s)
    # Bounded by duration and cancelled when the eval ends; a small pool of prompts (cycled) starts it quickly.
    load_config = load_config.model_copy(update={"num_requests": None, "prompt_pool": LOAD_PROMPT_POOL})
    loaded, load = asyncio.run(eval_beside_load(config, load_config, folder, spec.settle_s))
    changed, compared = changed_answers(out / SAMPLES_FILE, folder / "eval" / SAMPLES_FILE)
    delta = None if loaded.value is None or idle.value is None else loaded.value - idle.value
    return {"load": spec.label, "dir": str(folder.relative_to(run.cell_dir)), "result": loaded.model_dump(mode="json"),
            "load_summary": load.model_dump(mode="json"), "delta": delta, "changed_answers": changed,
            "compared": compared}


async def eval_beside_load(config: EvalConfig, load_config: LoadConfig, folder: Path,
                           settle_s: float) -> tuple[EvalSummary, LoadSummary]:
    """Start the load, wait for its first answer and ``settle_s`` more, run the eval, stop the load.

    Both summaries come back, the load's rebuilt from the records it wrote.
    """
    load_dir = folder / "load"
    load = asyncio.create_task(run_load_async(load_config, load_dir))
    try:
        await _until_load_flows(load, load_dir / "requests.jsonl")
        await asyncio.sleep(settle_s)
        summary = await arun_eval(config, folder / "eval")
    finally:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
    return summary, await asyncio.to_thread(rebuild_summary, load_dir, load_config.slo, load_config)


async def _until_load_flows(load: asyncio.Task[LoadSummary], records: Path) -> None:
    """Return once the load has a finished request on record: preparing prompts and tokenizer takes a while,
    and an eval that started before would be scored idle. Raise if the load ends or stalls first."""
    deadline = asyncio.get_running_loop().time() + LOAD_START_TIMEOUT_S
    while not await asyncio.to_thread(_has_records, records):
        if load.done():
            load.result()  # its exception, if it failed
            raise RuntimeError("bench load ended before the eval under load could start")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"bench load finished no request in {LOAD_START_TIMEOUT_S:g} s; no eval under load")
        await asyncio.sleep(0.2)


def _has_records(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _answers(path: Path) -> dict[str, Any]:
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        if sample.get("error") is None:
            answers[sample["doc_id"]] = sample.get("extracted")
    return answers


def changed_answers(idle: Path, loaded: Path) -> tuple[int, int]:
    """(documents whose extracted answer differs, documents answered in both runs)."""
    before, after = _answers(idle), _answers(loaded)
    common = before.keys() & after.keys()
    return sum(before[doc] != after[doc] for doc in common), len(common)
