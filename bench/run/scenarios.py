"""Run each scenario kind through one running server and return what ``cell.json`` records for it.

Every load-like measurement is a normal :func:`bench.load.runner.run_load` run in its own folder
(``requests.jsonl``, ``server_metrics.jsonl``, ``summary.json``), so the report can recompute anything
from the records; each point's entry names that folder (``dir``, relative to the cell folder).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from rich.progress import Progress

from backends.checkpoints import weight_file_bytes
from backends.weightbytes import weight_bytes_at_load
from bench.load.arrivals import Arrival, ConcurrencyArrival, PoissonArrival
from bench.load.config import LoadConfig, LoadOptions
from bench.load.runner import Prepared, run_load
from bench.load.sweep import run_sweep, step_seed
from bench.load.workloads import JsonlWorkload, RandomWorkload, SharedPrefixWorkload, Workload
from bench.metrics import SLO, LoadSummary
from bench.run.probes import KVInfo, MemorySampler, kv_info
from bench.run.schema import EvalScenario, KVCacheScenario, LoadPoint, LoadScenario, SpeculativeScenario, load_options
from servers.launch import LaunchError, ServerHandle

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

# Words for the repetitive prompts (common English, one token each in BPE vocabularies).
_WORDS_TEXT = ("time year people way day man thing woman life child world school state family student group country "
               "problem hand part place case week company system program question work government number night "
               "point home water room mother area money story fact month lot right study book eye job word "
               "business issue side kind head house service friend father power hour game line")


Api = Literal["chat", "completions"]


@dataclass
class CellRun:
    """What every scenario of one cell needs: the server, the cell's folder, seed, progress and memory."""

    handle: ServerHandle
    cell_id: str
    cell_dir: Path
    seed: int
    max_batch: int
    progress: Progress
    memory: MemorySampler
    model_gpus: int = 1  # GPUs one copy of the model is split over (tensor × pipeline parallel), for MBU
    # The tokenizer (and a sweep's prompts) every point of the cell shares: loaded once, not once a point.
    prepared: Prepared = field(default_factory=Prepared)

    @cached_property
    def tokenizer(self) -> str | None:
        """The served checkpoint's own tokenizer folder, for exact prompt lengths: the one the server was given, or
        the checkpoint's folder when it holds tokenizer files. Resolved from the server's spec, so a run's
        ``--registry`` is honoured (``bench load``'s own lookup reads the default models.yaml). None: a GGUF file
        or a folder without one, left to ``bench load``'s candidates."""
        return tokenizer_folder(self.handle.spec.tokenizer_path, self.handle.spec.model_path)

    @cached_property
    def model_bytes(self) -> int | None:
        """The weights a decode step reads, for MBU: where the engine quantizes the checkpoint at load (vLLM's
        ``quantization: fp8`` on a bf16 checkpoint reads about half its files) what it keeps, else the served
        checkpoint's weight files. Written into every load point's ``load_config.json``, so that its MBU
        recomputes from the run folder alone, on a machine without the checkpoint (None: not known here)."""
        spec = self.handle.spec
        if spec.options.quantization is not None and spec.model_format == "hf":
            return weight_bytes_at_load(spec.model_path, spec.options.quantization)
        return weight_file_bytes(spec.model_path)

    @cached_property
    def kv(self) -> KVInfo:
        """The KV capacity the engine reports, read once: it is fixed for the server's life."""
        return kv_info(self.handle.url + "/metrics", self.handle.log_path, self.model_gpus)

    def check_alive(self) -> None:
        """Fail the scenario with the server's log tail if the server died."""
        if not self.handle.alive():
            raise LaunchError(f"{self.handle.spec.backend} server died during the run:\n{self.handle.log_tail()}")

    def say(self, text: str) -> None:
        """One progress line."""
        self.progress.console.print(f"  {self.cell_id} · {text}")

    def load(self, folder: Path, *, api: Api, workload: Workload, arrival: ConcurrencyArrival | PoissonArrival,
             requests: int, warmup: int = 0, slo: SLO | None = None, duration_s: float | None = 300.0,
             ) -> dict[str, Any]:
        """One ``run_load`` into ``folder``; the summary plus memory and server-counter figures."""
        return self.run(self.config(api=api, workload=workload, arrival=arrival, requests=requests, warmup=warmup,
                                    slo=slo, duration_s=duration_s), folder)

    def run(self, config: LoadConfig, folder: Path) -> dict[str, Any]:
        """``config`` run into ``folder`` (its seed drawn per folder); the point's record."""
        self.check_alive()
        self.memory.take_peak()
        # Each folder draws its own prompts: the same seed everywhere would repeat the first prompts of an
        # earlier point, and a prefix cache would then hit where the workload promises unique prompts.
        config = config.model_copy(update={"seed": step_seed(self.seed, folder.name)})
        summary = run_load(config, folder, prepared=self.prepared)
        return self.point(summary, folder)

    def config(self, *, api: Api, workload: Workload, arrival: ConcurrencyArrival | PoissonArrival,
               requests: int, warmup: int = 0, slo: SLO | None = None, duration_s: float | None = 300.0,
               ) -> LoadConfig:
        """A load config against this cell's server."""
        return LoadConfig(url=self.handle.url, model=self.handle.model, api=api, workload=workload,
                          arrival=arrival, num_requests=requests, warmup=warmup, duration_s=duration_s,
                          seed=self.seed, slo=slo or SLO(), server_gpus=self.model_gpus,
                          tokenizer=self.tokenizer, model_bytes=self.model_bytes)

    def scenario_config(self, scenario: LoadOptions, arrival: Arrival) -> LoadConfig:
        """The load config of one point of a load-like scenario: its ``bench load`` options against this cell's
        server and seed under ``arrival`` (``server_gpus``, unless the scenario sets it, is this cell's)."""
        fields = load_options(scenario)
        if "server_gpus" not in scenario.model_fields_set:
            fields["server_gpus"] = self.model_gpus
        if fields.get("tokenizer") is None:
            fields["tokenizer"] = self.tokenizer
        if fields.get("model_bytes") is None:
            fields["model_bytes"] = self.model_bytes
        return LoadConfig.model_validate({**fields, "url": self.handle.url, "model": self.handle.model,
                                          "arrival": arrival, "seed": self.seed})

    def point(self, summary: LoadSummary, folder: Path) -> dict[str, Any]:
        """A load point's record: the summary (server counters over its measured window included), where its
        files are and peak RSS."""
        data = summary.model_dump(mode="json")
        data["dir"] = str(folder.relative_to(self.cell_dir))
        data["rss_peak_gib"] = self.memory.take_peak()
        return data


def tokenizer_folder(tokenizer_path: Path | None, model_path: Path) -> str | None:
    """The first of the two that is a folder holding a Hugging Face tokenizer (see :attr:`CellRun.tokenizer`)."""
    for path in (tokenizer_path, model_path):
        if path is not None and path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES):
            return str(path)
    return None


def _arrival(point: LoadPoint) -> ConcurrencyArrival | PoissonArrival:
    return point.arrival()


def run_load_scenario(scenario: LoadScenario, run: CellRun) -> dict[str, Any]:
    """Fixed points, or a sweep; ``best`` is the sweep's highest passing load."""
    out = run.cell_dir / scenario.name
    if scenario.sweep is not None:
        run.check_alive()
        run.say(f"{scenario.name} · sweep by {scenario.sweep.mode}")
        base = run.scenario_config(scenario, ConcurrencyArrival(n=1))
        result = run_sweep(base, scenario.sweep, out, prepared=run.prepared)
        points = {f"{p.value:g}": run.point(p.summary, out / f"{result.mode}-{p.value:g}") | {
            "passed": p.passed, "saturated": p.saturated} for p in result.points}
        return {"kind": "load", "mode": result.mode, "best": result.best, "points": points}
    points = {}
    for point in scenario.points:
        run.say(f"{scenario.name} · {point.label}")
        points[point.label] = run.run(run.scenario_config(scenario, _arrival(point)), out / point.label)
    return {"kind": "load", "mode": "points", "best": None, "points": points}


def run_kv_scenario(scenario: KVCacheScenario, run: CellRun) -> dict[str, Any]:
    """KV capacity, latency against context length, what fits, and the prefix-cache probe."""
    out = run.cell_dir / scenario.name
    kv = run.kv
    lengths: dict[str, Any] = {}
    for length in scenario.context_lengths:
        run.say(f"{scenario.name} · context {length}")
        workload = RandomWorkload(input_tokens=length, output_tokens=scenario.output_tokens)
        data = run.load(out / f"ctx{length}", api=scenario.api, workload=workload,
                        arrival=ConcurrencyArrival(n=1), requests=scenario.requests_per_length, warmup=1)
        data["max_concurrency_fit"] = fits(kv.capacity_tokens, length + scenario.output_tokens, run.max_batch)
        lengths[str(length)] = data
    result: dict[str, Any] = {"kind": "kv-cache", "kv": kv.as_dict(), "max_batch": run.max_batch,
                              "lengths": lengths}
    if scenario.prefix is not None:
        result["prefix"] = _prefix_probe(scenario, run, out)
    return result


def fits(capacity_tokens: int | None, tokens_per_request: int, max_batch: int) -> dict[str, int | None]:
    """Concurrency the KV cache holds at a request length (``kv``), and that capped by the scheduler's batch."""
    if not capacity_tokens:
        return {"kv": None, "served": None}
    kv = capacity_tokens // tokens_per_request
    return {"kv": kv, "served": min(kv, max_batch)}


def _prefix_probe(scenario: KVCacheScenario, run: CellRun, out: Path) -> dict[str, Any]:
    probe = scenario.prefix
    assert probe is not None
    shared = SharedPrefixWorkload(prefix_tokens=probe.prefix_tokens, suffix_tokens=probe.suffix_tokens,
                                  output_tokens=probe.output_tokens, num_prefixes=1)
    unique = RandomWorkload(input_tokens=probe.prefix_tokens + probe.suffix_tokens,
                            output_tokens=probe.output_tokens)
    found = {}
    workloads: tuple[tuple[str, Workload], ...] = (("shared", shared), ("unique", unique))
    for label, workload in workloads:
        run.say(f"{scenario.name} · prefix probe {label}")
        data = run.load(out / f"prefix-{label}", api=scenario.api, workload=workload,
                        arrival=ConcurrencyArrival(n=probe.concurrency), requests=probe.requests)
        found[label] = data
    return found


def repetitive_prompts(path: Path, count: int, line_tokens: int, repeats: int, output_tokens: int,
                       seed: int) -> JsonlWorkload:
    """Write prompts that repeat one random line several times (the model continues the pattern)."""
    rng = random.Random(seed)
    words = _WORDS_TEXT.split(" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for _ in range(count):
            line = " ".join(rng.choice(words) for _ in range(line_tokens)) + ".\n"
            fh.write(json.dumps({"prompt": line * repeats, "output_tokens": output_tokens}) + "\n")
    return JsonlWorkload(path=path, output_tokens=output_tokens)


def run_speculative_scenario(scenario: SpeculativeScenario, run: CellRun, method: str) -> dict[str, Any]:
    """This cell's method at each concurrency; speed-ups come later, against the ``none`` cell."""
    out = run.cell_dir / scenario.name
    workload = scenario.workload
    if workload is None:
        count = (scenario.requests_per_point + scenario.warmup) * len(scenario.concurrencies)
        workload = repetitive_prompts(out / "prompts.jsonl", count, scenario.repeat_line_tokens,
                                      scenario.repeats, scenario.output_tokens, run.seed)
    points = {}
    for concurrency in scenario.concurrencies:
        run.say(f"{scenario.name} · {method} · c{concurrency}")
        points[f"c{concurrency}"] = run.load(out / f"c{concurrency}", api=scenario.api, workload=workload,
                                             arrival=ConcurrencyArrival(n=concurrency),
                                             requests=scenario.requests_per_point, warmup=scenario.warmup)
        points[f"c{concurrency}"]["concurrency"] = concurrency
    return {"kind": "speculative", "method": method, "points": points}


def run_eval_scenario(scenario: EvalScenario, run: CellRun) -> dict[str, Any]:
    """The task through the endpoint (:func:`bench.run.eval_scenario.run_eval_scenario`)."""
    from bench.run.eval_scenario import run_eval_scenario as run_eval

    return run_eval(scenario, run)
