"""Why llama-server's decode step grows with the number of sequences: a CPU separation of the suspects.

The GPU sweep (reports/gpu-seed-table-8b-h100/llamacpp-scaling-note.md) shows the median inter-token gap growing
from 5.1 ms at 1 sequence to 16.8 ms at 16. This script measures, on the 2-core CPU build and the bundled SmolLM2
Q4_1, the three costs that could do that:

1. ``sampler``: the server's default sampler chain (logit-bias, top-k 40, top-p, min-p, temp 0, dist), run on the
   host once per sequence per step, timed through llama-cpp-python for a 49152-token vocabulary (SmolLM2) and a
   128256-token one (Llama 3). No model is loaded.
2. ``batched_bench`` (only if a ``llama-batched-bench`` binary is given or found beside llama-server): decode step
   time against batch size with nothing else in the process (no sampling, no HTTP, no stale KV), at short and
   long prompts.
3. ``server``: llama-server decode step (median gap between streamed tokens while exactly B sequences decode)
   for B = 1, 2, 4, 8 under four conditions:
   ``short`` 64-token prompts on a fresh server; ``long`` 1024-token prompts on a fresh server; ``stale`` 64-token
   prompts after 12 idle slots were left holding 1025 cells each (what --no-cache-prompt leaves behind: a released
   slot keeps its KV); ``stale-split`` the same with ``--no-kv-unified``. With a unified pool every decode step's
   attention spans all used cells (n_kv = padded used_max_p1), so ``stale`` minus ``short`` is the cost of cells
   that are masked out.

A server built with ``-DDEBUG_TIMINGS`` (tools/server/server-context.cpp) also prints the mean time per decode,
per post-decode pass and per sampled token; those lines are recorded when present.

    .venv/bin/python benchmarks/llamacpp_batch_scaling.py [--server PATH] [--batched-bench PATH]   (about 5 min)

The committed results used a native build of the vendored tree with both binaries (about 12 min on 2 cores):
``cmake -S <vendor/llama.cpp> -B build -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
-DCMAKE_CXX_FLAGS=-DDEBUG_TIMINGS && cmake --build build --target llama-server llama-batched-bench``.

Writes benchmarks/results-llamacpp-batch-scaling-cpu.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SERVEBENCH_CACHE", Path.home() / ".cache/servebench"))
STOCK_SERVER = CACHE / "bin/llama.cpp-0.3.36-cpu-dl1/llama-server"
OUT = ROOT / "benchmarks/results-llamacpp-batch-scaling-cpu.json"
PORT = 18441
SLOTS, PER_SLOT = 32, 2048
BATCHES = (1, 2, 4, 8)
FILL_SLOTS, FILL_TOKENS = 12, 1024
N_PREDICT = 40
# (name, prompt tokens, idle slots filled first, unified KV)
CONDITIONS = (("short", 64, 0, True), ("long", 1024, 0, True), ("stale", 64, FILL_SLOTS, True),
              ("stale-split", 64, FILL_SLOTS, False))


def bundled_gguf() -> str:
    from backends.llamacpp.smoke import bundled_gguf as find
    return str(find())


# ---------------------------------------------------------------- 1. sampler chain on the host

def _sampler_chain(llama: Any, n_vocab: int, only_top_k: bool) -> Any:
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    if only_top_k:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(40))
        return chain
    # the chain llama-server builds for servebench's requests (temp 0, top_k 40, top_p 0.95, min_p 0.05; the
    # three EOG tokens biased to -inf by ignore_eos); penalties, DRY, XTC, typical and top-n-sigma are no-ops
    eog = (llama.llama_logit_bias * 3)(*[llama.llama_logit_bias(t, -float("inf")) for t in (0, 2, 4)])
    for s in (llama.llama_sampler_init_logit_bias(n_vocab, 3, eog), llama.llama_sampler_init_top_k(40),
              llama.llama_sampler_init_top_p(0.95, 1), llama.llama_sampler_init_min_p(0.05, 1),
              llama.llama_sampler_init_temp_ext(0.0, 0.0, 1.0), llama.llama_sampler_init_dist(0)):
        llama.llama_sampler_chain_add(chain, s)
    return chain


def sampler_ms(n_vocab: int, only_top_k: bool, iters: int = 400) -> float:
    """Median ms for one sequence's sampling: fill the candidate array from the logits, then apply the chain."""
    import ctypes

    import llama_cpp as llama
    import numpy as np

    dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    rng = np.random.default_rng(0)
    pool = []  # a few logit rows, cycled so that no single row stays in cache or trains the branch predictor
    for _ in range(8):
        row = np.zeros(n_vocab, dtype=dtype)
        row["id"], row["logit"] = np.arange(n_vocab), rng.standard_normal(n_vocab).astype(np.float32) * 3
        pool.append(row)
    cand = np.zeros(n_vocab, dtype=dtype)
    nbytes, dst = cand.nbytes, cand.ctypes.data
    chain, times = _sampler_chain(llama, n_vocab, only_top_k), []
    for i in range(iters):
        t0 = time.perf_counter()
        # set_logits in common/sampling.cpp writes n_vocab candidates per sequence per step; a memmove stands in
        ctypes.memmove(dst, pool[i % len(pool)].ctypes.data, nbytes)
        arr = llama.llama_token_data_array(ctypes.cast(dst, ctypes.POINTER(llama.llama_token_data)),
                                           n_vocab, -1, False)
        llama.llama_sampler_apply(chain, ctypes.byref(arr))
        times.append(time.perf_counter() - t0)
    llama.llama_sampler_free(chain)
    return statistics.median(times[20:]) * 1e3


def sampler_rows() -> list[dict[str, Any]]:
    return [{"n_vocab": v, "chain": "top_k only" if k else "server default",
             "ms_per_sequence": round(sampler_ms(v, k), 3)} for v in (49152, 128256) for k in (False, True)]


# ---------------------------------------------------------------- 2. llama-batched-bench

def batched_bench_rows(binary: Path, gguf: str, threads: int) -> list[dict[str, Any]]:
    cmd = [str(binary), "-m", gguf, "-c", "16384", "-b", "2048", "-ub", "512", "-npp", "64,1024", "-ntg", "32",
           "-npl", ",".join(map(str, BATCHES)), "-kvu", "-t", str(threads), "--output-format", "jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [{"pp": r["pp"], "batch": r["pl"], "n_kv": r["n_kv"], "step_ms": round(1e3 * r["t_tg"] / r["tg"], 2),
             "prefill_tok_s": round(r["speed_pp"], 1)} for r in rows]


# ---------------------------------------------------------------- 3. llama-server

class Server:
    """One llama-server process on loopback, with the launcher's context flags (unified pool capped per slot)."""

    def __init__(self, binary: Path, gguf: str, threads: int, unified: bool, log: Path) -> None:
        kv = ["--kv-unified", "--kv-unified-per-slot", str(PER_SLOT)] if unified else ["--no-kv-unified"]
        cmd = [str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(PORT), "--parallel", str(SLOTS),
               "--cont-batching", *kv, "-c", str(SLOTS * PER_SLOT), "--threads", str(threads),
               "--threads-batch", str(threads), "--no-cache-prompt", "--cache-ram", "0", "-lv", "4"]
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        for _ in range(240):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llama-server did not become healthy; see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._fh.close()

    def debug_timings(self) -> dict[str, float]:
        """The last DEBUG_TIMINGS means the server printed (cumulative over its life), if it was built with them."""
        found = {}
        for m in re.finditer(r"avg (t_\w+)\s*= ([\d.]+) ms", self.log.read_text(errors="replace")):
            found[m.group(1)] = float(m.group(2))
        return found


def _prompt(rng: random.Random, n: int) -> list[int]:
    # random token ids: no two requests share a prefix, so slot selection never matches by similarity
    return [rng.randrange(1000, 40000) for _ in range(n)]


def _complete(body: dict[str, Any], stamps: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=600)
    conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    for raw in resp:
        # one event per generated token; the closing event (stop: true) carries timings, not a token
        if raw.startswith(b"data: ") and not json.loads(raw[6:]).get("stop", False):
            stamps.append(time.perf_counter())
    conn.close()


def wave(rng: random.Random, batch: int, prompt_tokens: int, n_predict: int) -> list[list[float]]:
    """Send ``batch`` streaming requests at once; return each one's token arrival times."""
    stamps: list[list[float]] = [[] for _ in range(batch)]
    threads = [threading.Thread(target=_complete, args=({
        "prompt": _prompt(rng, prompt_tokens), "n_predict": n_predict, "stream": n_predict > 1,
        "ignore_eos": True, "temperature": 0, "cache_prompt": False}, s)) for s in stamps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stamps


def steady_gaps_ms(stamps: list[list[float]]) -> list[float]:
    """Gaps while all sequences decode: after the last first token, before the first sequence ends."""
    start, end = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    return [1e3 * (b - a) for s in stamps for a, b in itertools.pairwise(s) if a >= start and b <= end]


def server_condition(binary: Path, gguf: str, threads: int, cond: tuple[str, int, int, bool], work: Path,
                     ) -> list[dict[str, Any]]:
    name, prompt_tokens, fill, unified = cond
    rng, rows = random.Random(0), []
    server: Server | None = None
    held = 0  # KV cells left by finished requests (idle slots keep their cells)
    for batch in BATCHES:
        if server is None or not fill:  # fresh server per point, except the stale pool, filled once
            if server:
                server.stop()
            server, held = Server(binary, gguf, threads, unified, work / f"{name}-b{batch}.log"), 0
            if fill:
                wave(rng, fill, FILL_TOKENS, 1)
                held = fill * (FILL_TOKENS + 1)
        assert server is not None
        t0 = time.perf_counter()
        gaps = steady_gaps_ms(wave(rng, batch, prompt_tokens, N_PREDICT))
        rows.append({"condition": name, "unified_kv": unified, "batch": batch, "prompt_tokens": prompt_tokens,
                     "idle_cells_held": held, "active_cells_end": batch * (prompt_tokens + N_PREDICT),
                     "step_ms_p50": round(statistics.median(gaps), 2), "n_gaps": len(gaps),
                     "wall_s": round(time.perf_counter() - t0, 1), "debug_timings": server.debug_timings()})
        held += batch * (prompt_tokens + N_PREDICT - 1)
        print(json.dumps(rows[-1]), flush=True)
    if server is not None:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", type=Path, default=STOCK_SERVER)
    ap.add_argument("--batched-bench", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="server/bench threads (one core is left to the client)")
    args = ap.parse_args()
    gguf = bundled_gguf()
    result: dict[str, Any] = {"command": "benchmarks/llamacpp_batch_scaling.py", "server_binary": str(args.server),
                    "gguf": Path(gguf).name, "threads": args.threads, "slots": SLOTS, "per_slot": PER_SLOT}
    result["sampler"] = sampler_rows()
    print(json.dumps(result["sampler"]), flush=True)
    bench = args.batched_bench or args.server.with_name("llama-batched-bench")
    result["batched_bench"] = batched_bench_rows(bench, gguf, args.threads) if bench.exists() else None
    print(json.dumps(result["batched_bench"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["server"] = [row for cond in CONDITIONS
                            for row in server_condition(args.server, gguf, args.threads, cond, Path(tmp))]
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
