"""Write ``report.md`` and a self-contained ``report.html`` (plots embedded, no network)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from bench.report import plots
from bench.report.tables import RunData, cost_per_million, load_run


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


LOAD_HEADER = ("run", "backend", "model", "options", "scenario", "load", "ok/err", "req/s", "out tok/s",
               "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p50 ms", "E2E p50 ms", "E2E p99 ms",
               "goodput req/s", "startup s", "$/1M out tok")


def load_table(runs: list[RunData], gpu_hour_usd: float | None) -> list[list[str]]:
    """The latency and throughput table, one row per cell and load point."""
    rows = []
    for run in runs:
        for r in run.loads:
            s = r.summary
            rows.append([
                run.run_id, r.backend, r.model, r.options, r.scenario, r.point,
                f"{s.get('num_ok', 0)}/{s.get('num_errors', 0)}", _fmt(s.get("request_throughput"), 2),
                _fmt(s.get("output_throughput_tok_s")), _fmt(r.stat("ttft_ms", "p50")), _fmt(r.stat("ttft_ms", "p99")),
                _fmt(r.stat("tpot_ms", "p50")), _fmt(r.stat("itl_ms", "p50")), _fmt(r.stat("e2e_ms", "p50")),
                _fmt(r.stat("e2e_ms", "p99")), _fmt(s.get("goodput"), 2), _fmt(r.startup_s),
                _fmt(cost_per_million(s.get("output_throughput_tok_s"), gpu_hour_usd), 2),
            ])
    return rows


EVAL_HEADER = ("run", "backend", "model", "options", "task", "metric", "value", "95% CI", "n", "errors")


def eval_table(runs: list[RunData]) -> list[list[str]]:
    """Quality rows."""
    rows = []
    for run in runs:
        for e in run.evals:
            res = e.result
            ci = res.get("ci95")
            rows.append([run.run_id, e.backend, e.model, e.options, str(res.get("task")), str(res.get("metric")),
                         _fmt(res.get("value"), 3), f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "–",
                         str(res.get("n_samples")), str(res.get("n_errors"))])
    return rows


def _md_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _environment_lines(runs: list[RunData]) -> list[str]:
    lines = []
    for run in runs:
        env = run.meta.get("environment", {})
        pkgs = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
        gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "none"
        lines.append(f"{run.run_id}: CPU {env.get('cpu')} ×{env.get('cpu_count')}, GPU {gpus}, "
                     f"git {str(env.get('git_sha'))[:10]}; {pkgs}")
    return lines


def write_report(run_dirs: list[Path], out: Path, gpu_hour_usd: float | None = None) -> list[Path]:
    """Write report.md, report.html and plots for one run or several side by side."""
    runs = [load_run(d) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    loads = load_table(runs, gpu_hour_usd)
    evals = eval_table(runs)
    problems = [[p.run, p.cell, p.status, p.reason] for run in runs for p in run.problems]
    pngs = [p for p in [plots.throughput_latency([r for run in runs for r in run.loads], out)] if p]
    title = "servebench report: " + ", ".join(r.run_id for r in runs)
    md = [f"# {title}", "", "## Latency and throughput", "", _md_table(LOAD_HEADER, loads), ""]
    if evals:
        md += ["## Quality", "", _md_table(EVAL_HEADER, evals), ""]
    if problems:
        md += ["## Cells not run", "", _md_table(("run", "cell", "status", "reason"), problems), ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    md += ["", "## Environment", "", *[f"- {line}" for line in _environment_lines(runs)], "",
           "Metric definitions: docs/metrics.md (TTFT from send; TPOT excludes the first token; ITL per token)."]
    paths = [out / "report.md", out / "report.html"]
    paths[0].write_text("\n".join(md) + "\n")
    paths[1].write_text(_html(title, loads, evals, problems, pngs, _environment_lines(runs)))
    return paths + pngs


def _html(title: str, loads: list[list[str]], evals: list[list[str]], problems: list[list[str]],
          pngs: list[Path], env: list[str]) -> str:
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem}</figcaption></figure>" for p in pngs
    )
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Latency and throughput</h2>", _html_table(LOAD_HEADER, loads)]
    if evals:
        parts += ["<h2>Quality</h2>", _html_table(EVAL_HEADER, evals)]
    if problems:
        parts += ["<h2>Cells not run</h2>", _html_table(("run", "cell", "status", "reason"), problems)]
    parts += ["<h2>Plots</h2>", images, "<h2>Environment</h2>",
              "<ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in env) + "</ul>"]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
