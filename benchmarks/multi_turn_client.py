"""Can ``bench load --workload multi-turn`` keep N conversations going at once, and time them right?

Starts the calibration server (scripted TTFT and inter-token delay; its per-request write log is the ground truth,
on the same CLOCK_MONOTONIC as the client), then runs ``bench load --workload multi-turn`` with N concurrent
sessions for each N given: each session sends T turns, every turn the whole history so far plus a new user
message, a think time (exponential by default) after each reply. Per N it reports:

- achieved sessions against the target: sessions open at once over the sending window, less the time turns went
  out late (:func:`bench.metrics.sessions.achieved_sessions`);
- timing error: the client's first-token and last-token times minus the server's own write times of those chunks,
  over every turn and over the turns sent ``--settle-s`` after the start (every session sends its first turn at
  the same instant, a burst of N connections and requests);
- lateness: each turn's send time minus the time it was due (end of the last reply + think time);
- the client's event-loop lag and CPU, and whether ``bench load`` says it fell behind.

N is *sustained* when achieved ≥ 95% of N, the p50 timing error is under 1 ms and no request failed.

    python benchmarks/multi_turn_client.py --sessions 64 128 256 --turns 4 --think-s 1.0
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load.calibration import calibration_server, read_calibration_log
from bench.load.config import LoadConfig
from bench.load.records import read_records
from bench.load.runner import run_load


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3 if ordered else float("nan")


def measure(url: str, log_dir: Path, sessions: int, args: argparse.Namespace) -> dict[str, Any]:
    """One point: run N sessions, then compare the client's timestamps with the server's write log."""
    for f in log_dir.glob("calib-*.jsonl"):
        f.write_bytes(b"")
    out = args.out / f"sessions-{sessions}"
    cfg = LoadConfig.model_validate({
        "url": url, "model": "calibration", "tokenizer": None, "scrape": False, "seed": 0, "workers": args.workers,
        "workload": {"kind": "multi-turn", "turns": args.turns, "user_tokens": args.user_tokens,
                     "output_tokens": args.output_tokens, "think_time_s": args.think_s, "think": args.think},
        "arrival": {"kind": "concurrency", "n": sessions},
        "num_requests": sessions * args.turns * args.rounds, "duration_s": args.max_seconds,
    })  # fmt: skip
    summary = run_load(cfg, out)
    time.sleep(0.3)
    log = read_calibration_log(log_dir)
    first_err, last_err, send_err, settled = [], [], [], []
    records = read_records(out / "requests.jsonl")
    start = min((r.scheduled_t for r in records), default=0.0)
    for r in records:
        writes = log.get(r.request_id)
        if not r.ok or not writes or len(writes) < 2:
            continue
        first_err.append((r.first_token_t or 0.0) - writes[1])
        last_err.append(r.end_t - writes[-1])
        send_err.append(writes[0] - r.sent_t)  # client send to server receipt (loopback + parsing)
        if r.sent_t - start >= args.settle_s:  # past the start, where every session sends its first turn at once
            settled += [first_err[-1], last_err[-1]]
    errs = first_err + last_err
    err_p50 = _pct(errs, 0.5)
    late = [r.sent_t - r.scheduled_t for r in records]
    figures, health = summary.sessions, summary.client
    achieved = figures.achieved if figures is not None else None
    row = {
        "target_sessions": sessions,
        "achieved_sessions": achieved,
        "turns": len(records),
        "errors": summary.num_errors,
        "turns_per_s": summary.request_throughput,
        "streamed_tok_s": summary.output_throughput_tok_s,
        "timing_err_p50_ms": err_p50,
        "timing_err_p90_ms": _pct(errs, 0.9),
        "timing_err_p99_ms": _pct(errs, 0.99),
        "timing_err_mean_ms": statistics.fmean(errs) * 1e3 if errs else float("nan"),
        "settled_timing_err_p50_ms": _pct(settled, 0.5),
        "settled_timing_err_p99_ms": _pct(settled, 0.99),
        "send_to_receipt_p50_ms": _pct(send_err, 0.5),
        "late_p50_ms": _pct(late, 0.5),
        "late_p99_ms": _pct(late, 0.99),
        "loop_lag_p99_ms": health.lag_p99_ms if health else None,
        "client_cpu_busy": health.cpu_busy_max if health else None,
        "client_behind": health.behind if health else None,
        "behind_reasons": health.reasons if health else [],
        "ttft_by_turn_p50_ms": [t.ttft_ms.p50 for t in summary.turns],
        "prompt_tokens_by_turn": [t.prompt_tokens_mean for t in summary.turns],
    }
    row["sustained"] = (achieved is not None and achieved >= 0.95 * sessions and err_p50 < 1.0
                        and summary.num_errors == 0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="conversations per user, one after another")
    ap.add_argument("--user-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--think-s", type=float, default=1.0)
    ap.add_argument("--think", choices=["fixed", "exponential"], default="exponential")
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--settle-s", type=float, default=1.0, help="settled figures: turns sent this long after the "
                    "start (every session sends its first turn at once)")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="upper bound per point")
    ap.add_argument("--workers", type=int, default=1, help="client processes")
    ap.add_argument("--server-procs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/multi_turn_client"))
    args = ap.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as log_dir,
        calibration_server(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, procs=args.server_procs, log_dir=log_dir,
                           spin_ms=0.0) as url,
    ):
        for sessions in args.sessions:
            row = measure(url, Path(log_dir), sessions, args)
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    best = max((r for r in rows if r["sustained"]), key=lambda r: r["target_sessions"], default=None)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "best": best}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi_turn_client.json").write_text(json.dumps(result, indent=2))
    print("most sessions sustained:", best["target_sessions"] if best else None)


if __name__ == "__main__":
    main()
