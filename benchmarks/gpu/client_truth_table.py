"""The table of issue #20 from what ``benchmarks/gpu/client_truth.sh`` brought back.

One row per run (warm-up runs included, marked): output tok/s, the client's mean TPOT, vLLM's own mean
inter-token latency and TPOT over the same window and the gaps, the client's event-loop lag (p99) and BEHIND
flag, and the steady-state check; then per configuration the spread over the measured repeats (mean and 95%
interval) and whether two configurations are within noise. ``vllm bench serve`` runs are rows of their own
(it reports no server view, lag or steady state).

    python benchmarks/gpu/client_truth_table.py RESULTS_DIR [--out table.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.load.repeats import read_repeats
from bench.metrics.client import LoadSummary
from bench.metrics.spread import Spread, within_noise

HEAD = ("| run | output tok/s | client TPOT mean (ms) | server ITL mean (ms) | server TPOT mean (ms) | TPOT gap (ms) "
        "| client lag p99 (ms) | client | steady (last/first third) |\n|---|---|---|---|---|---|---|---|---|")


def _f(value: float | None, digits: int = 2) -> str:
    """A number for the table, or – when missing."""
    return "–" if value is None else f"{value:,.{digits}f}"


def summary_row(label: str, s: LoadSummary) -> str:
    """One bench load run."""
    client = s.client
    lag = client.lag_p99_ms if client else None
    state = "–" if client is None else ("BEHIND" if client.behind else "ok")
    steady = s.steady_state
    steady_txt = "–" if steady is None else f"{'yes' if steady.steady else 'NO'} ({_f(steady.ratio)})"
    return (f"| {label} | {_f(s.output_throughput_tok_s, 0)} | {_f(s.tpot_ms.mean)} | "
            f"{_f(s.server.get('server_itl_mean_ms'))} | {_f(s.server.get('server_tpot_mean_ms'))} | "
            f"{_f(s.server.get('tpot_gap_ms'))} | {_f(lag)} | {state} | {steady_txt} |")


def vllm_row(label: str, r: dict[str, float]) -> str:
    """One ``vllm bench serve`` run (its mean TPOT; it has no server view, lag or steady-state check)."""
    return f"| {label} | {_f(r['output_throughput'], 0)} | {_f(r['mean_tpot_ms'])} | – | – | – | – | – | – |"


def spread_txt(s: Spread) -> str:
    """mean (95% interval)."""
    return f"{_f(s.mean, 1)} ({_f(s.ci95_low, 1)}–{_f(s.ci95_high, 1)})"


def config_name(folder: str) -> str:
    """``bench-load-w4-asc4`` -> ``bench load --workers 4, vLLM --api-server-count 4``."""
    workers, _, asc = folder.removeprefix("bench-load-w").partition("-asc")
    return f"bench load --workers {workers}" + (f", vLLM --api-server-count {asc}" if asc else "")


def table(results: Path) -> str:
    """The markdown: per-run rows, then the spread per configuration and the noise comparisons."""
    rows, spreads = [HEAD], {}
    for folder in sorted(results.glob("bench-load-w*")):
        name = config_name(folder.name)
        rep = read_repeats(folder)
        for i, s in enumerate(rep.warmup):
            rows.append(summary_row(f"{name}, warm-up run {i + 1}", s))
        for i, s in enumerate(rep.runs):
            rows.append(summary_row(f"{name}, repeat {i + 1}", s))
        spreads[name] = rep.spread
    vllm_runs = sorted((results / "vllm-bench").glob("run*.json"))
    for path in vllm_runs:
        rows.append(vllm_row(f"vllm bench serve, {path.stem}", json.loads(path.read_text())))
    out = ["\n".join(rows), "", "| configuration | output tok/s | client TPOT mean (ms) | TTFT mean (ms) |",
           "|---|---|---|---|"]
    for name, sp in spreads.items():
        out.append(f"| {name} | {spread_txt(sp['output_throughput_tok_s'])} | {spread_txt(sp['tpot_mean_ms'])} | "
                   f"{spread_txt(sp['ttft_mean_ms'])} |")
    names = list(spreads)
    out += ["", "Within noise (95% intervals overlap), output tok/s:"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = within_noise(spreads[a]["output_throughput_tok_s"], spreads[b]["output_throughput_tok_s"])
            out.append(f"- {a} vs {b}: {'within noise' if same else 'different'}")
    return "\n".join(out) + "\n"


def main() -> None:
    """Print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(args.results)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
