#!/usr/bin/env bash
# llama-server with a KV stream per slot (--no-kv-unified, what servebench passed before) against one unified pool
# capped per slot (--kv-unified --kv-unified-per-slot, what it passes now), on the CPU build and the bundled
# SmolLM2 Q4_1. Same slots, same -c, same load: concurrency 1, 8, 6, 5 in that order (the GPU sweep's order,
# after which the busy slots were scattered), 256 tokens in, 64 out. It prints TPOT p50 and output tok/s per
# point, and how many decode graphs the server reused over each point (llama-server's `graphs reused` counter,
# printed per request at -lv 4). Results: benchmarks/results-llamacpp-kv-split-cpu.json.
#   bash benchmarks/llamacpp_kv_split.sh            (about 6 minutes on 2 cores)
# reports/gpu-seed-table-h100/llamacpp-batch-note.md explains the mechanism.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SERVEBENCH_CACHE:-$HOME/.cache/servebench}/bin/llama.cpp-0.3.36-cpu-dl1/llama-server
GGUF=$(.venv/bin/python -c "from backends.llamacpp.smoke import bundled_gguf; print(bundled_gguf())")
TOK=${TOKENIZER:-smollm2-135m-instruct-hf}
SLOTS=8 CTX=1024 PORT=18431 REQUESTS=${REQUESTS:-24}
THREADS=${THREADS:-$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))}
W=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$W"' EXIT
for mode in split unified; do
    if [ $mode = split ]; then kv=(--no-kv-unified); else kv=(--kv-unified --kv-unified-per-slot $CTX); fi
    "$BIN" -m "$GGUF" --host 127.0.0.1 --port $PORT --parallel $SLOTS --cont-batching "${kv[@]}" \
        -c $((CTX * SLOTS)) --threads "$THREADS" --threads-batch "$THREADS" --no-cache-prompt --cache-ram 0 \
        --metrics -lv 4 > "$W/$mode.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:$PORT/health > /dev/null && break; sleep 0.5; done
    for c in 1 8 6 5; do
        before=$(grep -c "graphs reused" "$W/$mode.log" || true)
        timeout 600 .venv/bin/bench load --url http://127.0.0.1:$PORT --model m --api completions --tokenizer "$TOK" \
            --workload random --input-tokens 256 --output-tokens 64 --concurrency $c --num-requests "$REQUESTS" \
            --out "$W/$mode-c$c" > "$W/$mode-c$c.txt" 2>&1
        # the per-request lines of this point: the last value of the cumulative counter, minus the one before
        reused=$(grep "graphs reused" "$W/$mode.log" | tail -n +"$((before + 1))" | sed 's/.*= *//' | sort -n | tail -1)
        first=0
        [ "$before" -gt 0 ] && first=$(grep "graphs reused" "$W/$mode.log" | sed -n "${before}p" | sed 's/.*= *//')
        echo "$mode $c ${first:-0} ${reused:-0}" >> "$W/graphs.txt"
    done
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
done
.venv/bin/python - "$W" <<'EOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
graphs = {(m, int(c)): int(b) - int(a) for m, c, a, b in (l.split() for l in (w / "graphs.txt").read_text().splitlines())}
rows = []
for mode in ("split", "unified"):
    for c in (1, 8, 6, 5):
        s = json.loads((w / f"{mode}-c{c}" / "summary.json").read_text())
        rows.append({"kv": mode, "concurrency": c, "tpot_p50_ms": s["tpot_ms"]["p50"],
                     "output_tok_s": s["output_throughput_tok_s"], "graphs_reused": graphs[(mode, c)],
                     "client": (s.get("client") or {}).get("verdict")})
        print(f"{mode:8s} c={c}  TPOT p50 {s['tpot_ms']['p50']:6.1f} ms  {s['output_throughput_tok_s']:7.1f} tok/s"
              f"  graphs reused {graphs[(mode, c)]}")
out = Path("benchmarks/results-llamacpp-kv-split-cpu.json")
out.write_text(json.dumps({"command": "bash benchmarks/llamacpp_kv_split.sh", "rows": rows}, indent=2) + "\n")
print("wrote", out)
EOF
