"""PNG plots for the report (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.report.tables import LoadRow  # noqa: E402


def _series(rows: list[LoadRow]) -> dict[str, list[LoadRow]]:
    grouped: dict[str, list[LoadRow]] = defaultdict(list)
    for row in rows:
        grouped[f"{row.backend} · {row.model} · {row.options}"].append(row)
    return grouped


def throughput_latency(rows: list[LoadRow], out: Path) -> Path | None:
    """Output tokens/s against median TTFT and TPOT, one line per cell across its load points."""
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, series in _series(rows).items():
        xs = [r.summary.get("output_throughput_tok_s") or 0.0 for r in series]
        for ax, metric in zip(axes, ("ttft_ms", "tpot_ms"), strict=True):
            ys = [r.stat(metric, "p50") for r in series]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=label)
            for x, y, r in zip(xs, ys, series, strict=True):
                if y is not None:
                    ax.annotate(r.point, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax, title in zip(axes, ("TTFT p50 (ms)", "TPOT p50 (ms)"), strict=True):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Throughput against latency")
    fig.tight_layout()
    path = out / "throughput_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
