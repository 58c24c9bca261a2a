"""Where does a ``bench load`` point spend the wall time that is not its own measured duration?

Starts the calibration server (in another process), then runs ``bench load`` points the way a sweep does (one
:func:`bench.load.runner.run_load` after the other, in one process) with 1, 2 and 4 client processes and a real
tokenizer, and splits each point's wall time into:

- ``prepare``: the tokenizer and every prompt (:func:`bench.load.runner.prepare`);
- ``startup``: from the start of the run phase to the common start time ``t0`` less its fixed lead (worker
  processes spawned, their Job unpickled, ready; about nothing inline);
- ``sending``: from ``t0`` to the end of the last request (warm-up included, so more than ``duration_s``);
- ``drain``: from the last request's end to the run phase's return (workers exit, the tail is read);
- ``summary`` and ``timeseries``: :func:`bench.load.runner.rebuild_summary`, :func:`.write_time_series`;
- ``other``: the rest (the lead before ``t0``, ``load_config.json``, warnings).

``overhead`` is the wall time less the summary's ``duration_s`` (the measured window). The first point of a
process also pays its imports (transformers, for the tokenizer), so each worker count runs ``--points`` points
and the table shows them all. The points of one worker count share what the runner prepared, as a sweep's
steps do (``--fresh``: not).

    python benchmarks/load_point_overhead.py --workers 1 2 4 --points 2 --json /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.load import runner
from bench.load.calibration import calibration_server
from bench.load.config import LoadConfig
from bench.load.records import read_records

PHASES = ("prepare", "startup", "sending", "drain", "summary", "timeseries", "other")


def bundled_tokenizer() -> str:
    """The bundled model's HF folder (``bench models show smollm2-135m-instruct-hf``)."""
    bench = Path(sys.executable).with_name("bench")
    out = subprocess.run([str(bench), "models", "show", "smollm2-135m-instruct-hf"], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1]).stdout  # fmt: skip
    for line in out.splitlines():
        if line.startswith("resolved_path:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit("smollm2-135m-instruct-hf has no resolved_path: run `bench models prepare` first")


class Timers:
    """Wraps runner functions to time them (this process only; the workers are timed through ``t0``)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, name: str) -> None:
        inner = getattr(runner, name)
        spans = self.spans.setdefault(name, [])
        if getattr(inner, "__wrapped_by_timers__", False):
            return
        if name.startswith("_run_"):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await inner(*args, **kwargs)
                finally:
                    spans.append((start, time.perf_counter()))

            timed: Callable[..., Any] = timed_async
        else:

            def timed_sync(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    spans.append((start, time.perf_counter()))

            timed = timed_sync
        timed.__wrapped_by_timers__ = True  # type: ignore[attr-defined]
        setattr(runner, name, timed)

    def last(self, name: str) -> tuple[float, float]:
        return self.spans[name][-1]

    def total(self, name: str, since: float) -> float:
        return sum(b - a for a, b in self.spans.get(name, []) if a >= since)


def one_point(url: str, args: argparse.Namespace, workers: int, out: Path, timers: Timers,
              prepared: Any) -> dict[str, Any]:
    """One run_load point; its wall time split into phases (s)."""
    cfg = LoadConfig.model_validate({
        "url": url, "model": "calibration", "tokenizer": args.tokenizer, "api": "completions", "scrape": False,
        "seed": 1, "workers": workers, "arrival": {"kind": "concurrency", "n": args.concurrency},
        "workload": {"kind": "random", "input_tokens": args.input_tokens, "output_tokens": args.output_tokens},
        "num_requests": args.requests, "warmup": args.warmup, "duration_s": args.duration,
    })  # fmt: skip
    start = time.perf_counter()
    summary = runner.run_load(cfg, out, prepared=prepared) if prepared is not None else runner.run_load(cfg, out)
    wall = time.perf_counter() - start
    t0 = json.loads((out / "load_config.json").read_text())["run"]["t0"]
    run_name = "_run_inline" if cfg.processes() == 1 else "_run_processes"
    run_start, run_end = timers.last(run_name)
    last_end = max(r.closed_t or r.end_t for r in read_records(out / "requests.jsonl"))
    phases = {
        "prepare": timers.total("prepare", start),
        "startup": t0 - runner.START_LEAD_S - run_start,
        "sending": last_end - t0,
        "drain": run_end - last_end,
        "summary": timers.total("rebuild_summary", start),
        "timeseries": timers.total("write_time_series", start),
    }
    phases["other"] = wall - sum(phases.values())
    return {"workers": workers, "processes": cfg.processes(), "wall_s": wall, "duration_s": summary.duration_s,
            "overhead_s": wall - summary.duration_s, "requests_ok": summary.num_ok,
            "output_tokens": summary.total_output_tokens, **{f"{k}_s": v for k, v in phases.items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--points", type=int, default=2, help="points per worker count (the first pays the imports)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=384)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--input-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--tokenizer", default=None, help="default: the bundled model's HF folder")
    ap.add_argument("--fresh", action="store_true", help="prepare every point afresh (not as a sweep's steps)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.tokenizer = args.tokenizer or bundled_tokenizer()
    timers = Timers()
    for name in ("prepare", "_run_inline", "_run_processes", "rebuild_summary", "write_time_series"):
        timers.wrap(name)
    rows = []
    with calibration_server(ttft_ms=20.0, itl_ms=4.0) as url, tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            # As a sweep does, where the runner keeps what it prepared for the next step (not before it did).
            prepared = runner.Prepared() if hasattr(runner, "Prepared") and not args.fresh else None
            for i in range(args.points):
                row = one_point(url, args, workers, Path(tmp) / f"w{workers}-{i}", timers, prepared)
                rows.append(row | {"point": i})
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    print(f"\n{'workers':>7} {'point':>5} {'wall':>6} {'dur':>5} {'overhead':>8} "
          + " ".join(f"{p:>10}" for p in PHASES))
    for r in rows:
        print(f"{r['workers']:>7} {r['point']:>5} {r['wall_s']:6.2f} {r['duration_s']:5.2f} {r['overhead_s']:8.2f} "
              + " ".join(f"{r[p + '_s']:10.2f}" for p in PHASES))
    later = {w: [r["overhead_s"] for r in rows if r["workers"] == w and r["point"] > 0] for w in args.workers}
    print("\nmean overhead of the points after the first: "
          + ", ".join(f"{w} workers {statistics.fmean(v):.2f} s" for w, v in later.items() if v))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
