#!/usr/bin/env bash
# Issue #20 on the GPU: is the number the client prints the server's number? One vLLM server (the random-weight
# Llama-3.2-1B shape in bf16, 256 sequences), kept up for every client run, then:
#   - `bench load` at 256 concurrent users, 128 tokens in and exactly 128 out, 2,048 measured requests a run,
#     with --workers 1, 4 and 8; each a warm-up run plus 3 measured repeats (mean, std, 95% interval), and in
#     every summary the client's lag, the server's own TTFT/ITL/E2E over the same window (the gap), and the
#     steady-state check;
#   - `vllm bench serve` on the same server with the same shape of load, 3 runs, for comparison.
# Run on the device after vLLM is staged into /tmp/site, from a `git archive` of the tree, with TOKENIZER an HF
# tokenizer folder (SmolLM2's, carried; or a models.yaml entry, default smollm2-135m-instruct-hf) and
# CALL_LIMIT_S the seconds left in the device call:
#   TOKENIZER=DIR CALL_LIMIT_S=560 bash benchmarks/gpu/client_truth.sh
# Returns $OUT/client-truth.tar.gz (every summary.json, repeats.json, requests.jsonl and vLLM's result files, the
# server log) and $OUT/client-truth.log. The table is made from them here by benchmarks/gpu/client_truth_table.py.
set -uo pipefail
W=/tmp/llcuda
CT=$W/client-truth
OUTDIR=${OUT:-$CT/out}
LIMIT=${CALL_LIMIT_S:-560}
WORKERS=${WORKERS:-1 4 8}
API_SERVERS=${API_SERVERS:-1}   # vLLM --api-server-count: HTTP frontend processes
REQUESTS=${REQUESTS:-2048}
CONC=${CONC:-256}
MODEL=llama-3.2-1b-random
PORT=8011
mkdir -p "$CT" "$OUTDIR"
LOG=$OUTDIR/client-truth.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SERVEBENCH_CACHE=$W/cache SERVEBENCH_MODELS=$W/models.yaml
[ -f "$W/models.yaml" ] || cp models.yaml "$W/models.yaml"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
if ! python3 -m bench models show "$MODEL" >/dev/null 2>&1; then
    say "bench models random $MODEL --shape llama-3.2-1b"
    python3 -m bench models random "$MODEL" --shape llama-3.2-1b --tokenizer "${TOKENIZER:-smollm2-135m-instruct-hf}" \
        --out "$CT/models/$MODEL" --device cuda 2>&1 | tail -5 | tee -a "$LOG"
fi
TOK=$CT/models/$MODEL

say "bench serve --backend vllm --model $MODEL (256 sequences)"
python3 -m bench serve --backend vllm --model "$MODEL" --port $PORT --device cuda --max-batch 256 \
    --max-model-len 4096 --api-server-count "$API_SERVERS" > "$CT/serve.log" 2>&1 &
SERVE=$!
# SIGTERM, not SIGINT: a job started with & in a non-interactive shell ignores SIGINT (the first GPU run waited
# 200 s on a server that never saw it). bench serve drains and stops vLLM on SIGTERM.
stop_server() { kill -TERM "$SERVE" 2>/dev/null; timeout 60 tail --pid="$SERVE" -f /dev/null; kill -KILL "$SERVE" 2>/dev/null; }
trap stop_server EXIT
for _ in $(seq 1 300); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/v1/models', timeout=2)" \
        2>/dev/null && break
    kill -0 "$SERVE" 2>/dev/null || { say "server died"; tail -30 "$CT/serve.log" | tee -a "$LOG"; break; }
    sleep 1
done
say "server up"

RES=$CT/results
mkdir -p "$RES"
for w in $WORKERS; do
    # a run of 2,048 requests takes about 20 s here; leave room for packing
    [ $((LIMIT - SECONDS)) -gt 150 ] || { say "no time left for --workers $w"; continue; }
    say "bench load --workers $w: 1 warm-up run + 3 repeats"
    timeout -s INT $((LIMIT - SECONDS - 60)) python3 -m bench load --url "http://127.0.0.1:$PORT" --model "$MODEL" \
        --api completions --tokenizer "$TOK" --workload random --input-tokens 128 --output-tokens 128 \
        --concurrency "$CONC" --num-requests "$REQUESTS" --workers "$w" --repeats 3 --warmup-runs 1 \
        --out "$RES/bench-load-w$w$([ "$API_SERVERS" = 1 ] || echo "-asc$API_SERVERS")" 2>&1 | tail -25 | tee -a "$LOG"
done
for i in 1 2 3; do
    [ $((LIMIT - SECONDS)) -gt 90 ] || { say "no time left for vllm bench serve run $i"; continue; }
    say "vllm bench serve, run $i"
    timeout -s INT $((LIMIT - SECONDS - 50)) python3 -m vllm.entrypoints.cli.main bench serve --backend openai \
        --base-url "http://127.0.0.1:$PORT" --endpoint /v1/completions --model "$MODEL" --tokenizer "$TOK" \
        --dataset-name random --random-input-len 128 --random-output-len 128 --num-prompts "$REQUESTS" \
        --max-concurrency "$CONC" --ignore-eos --seed "$i" --save-result --result-dir "$RES/vllm-bench" \
        --result-filename "run$i.json" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
        2>&1 | grep -E "throughput|TTFT|TPOT|ITL|Successful" | tee -a "$LOG"
done
cp "$CT/serve.log" "$RES/" 2>/dev/null
find "$RES" -name requests.jsonl -exec gzip -f {} \;
tar -C "$CT" -czf "$OUTDIR/client-truth.tar.gz" results && say "packed: $(du -h "$OUTDIR/client-truth.tar.gz" | cut -f1)"
stop_server
trap - EXIT
