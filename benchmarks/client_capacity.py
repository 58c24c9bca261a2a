"""How fast can ``bench load`` drive a server before its own timing goes wrong?

Starts the calibration server in another process (with a per-request write log), then runs the
load generator at increasing Poisson rates. For every request it compares the client's timestamps
with the server's own write times (same CLOCK_MONOTONIC): the client's timing error is
``first_token_t - server's first write`` and ``end_t - server's last write``. A rate is *sustained*
when the achieved request rate is at least 95% of the offered rate and the p50 timing error is under
1 ms. Prints a table and writes JSON.

    python benchmarks/client_capacity.py --rates 50 100 200 400 800 --output-tokens 32 --workers 1
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


def measure(url: str, log_dir: Path, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One rate: run, then compare client and server timestamps per request."""
    for f in log_dir.glob("calib-*.jsonl"):
        f.write_bytes(b"")
    cfg = LoadConfig.model_validate({
        "url": url, "model": "calibration", "tokenizer": None, "scrape": False, "seed": 0, "workers": args.workers,
        "workload": {"kind": "random", "input_tokens": 16, "output_tokens": args.output_tokens},
        "arrival": {"kind": "poisson", "rate": rate},
        "num_requests": max(int(rate * args.seconds), 20),
    })
    summary = run_load(cfg, out / f"rate-{rate:g}")
    time.sleep(0.3)
    log = read_calibration_log(log_dir)
    first_err, last_err = [], []
    for r in read_records(out / f"rate-{rate:g}" / "requests.jsonl"):
        writes = log.get(r.request_id)
        if not r.ok or not writes or len(writes) < 2:
            continue
        first_err.append((r.first_token_t or 0) - writes[1])
        last_err.append(r.end_t - writes[-1])
    errs = sorted(first_err + last_err)

    def pct(p: float) -> float:
        return errs[min(len(errs) - 1, int(p * len(errs)))] * 1e3 if errs else float("nan")

    row = {
        "offered_req_s": rate,
        "achieved_req_s": summary.request_throughput,
        "streamed_tok_s": summary.output_throughput_tok_s,
        "errors": summary.num_errors,
        "timing_err_p50_ms": pct(0.5),
        "timing_err_p99_ms": pct(0.99),
        "timing_err_mean_ms": statistics.fmean(errs) * 1e3 if errs else float("nan"),
        "client_queue_p50_ms": summary.queue_ms.p50,
    }
    achieved = summary.request_throughput or 0.0
    row["sustained"] = achieved >= 0.95 * rate and pct(0.5) < 1.0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400, 800])
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--itl-ms", type=float, default=2.0)
    ap.add_argument("--ttft-ms", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="requests per step = rate x seconds")
    ap.add_argument("--workers", type=int, default=1, help="client processes")
    ap.add_argument("--server-procs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/client_capacity"))
    args = ap.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as log_dir,
        calibration_server(
            ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, procs=args.server_procs, log_dir=log_dir, spin_ms=0.0
        ) as url,
    ):
        for rate in args.rates:
            row = measure(url, Path(log_dir), rate, args, args.out)
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if row["achieved_req_s"] < 0.8 * rate:
                break
    best = max((r for r in rows if r["sustained"]), key=lambda r: r["offered_req_s"], default=None)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "best": best}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client_capacity.json").write_text(json.dumps(result, indent=2))
    print("best sustained:", json.dumps(best))


if __name__ == "__main__":
    main()
