#!/usr/bin/env bash
# The GPU seed table's part 2 (benchmarks/gpu/seed-table-8b.yaml, issue #15): the random-weight Llama-3.1-8B
# shape on vLLM (bf16, FP8 at load), llama.cpp CUDA (GGUF Q8_0, Q4_K_M, F16) and Transformers (bf16), on the
# device machine. Staged here by benchmarks/gpu/stage_8b.sh; the calls are in benchmarks/gpu/README.md
# ("Seed table part 2"). The same command in each call, right after the last (the machine stays warm 30 s); each
# call does what is left, in order, as far as its time allows:
#   - the carried part (benchmarks/gpu/xfer.sh take, XFER_DIR=.stage/xfer-8b); until all are here, nothing else;
#   - once per machine: the vLLM bundle -> /tmp/site, the gguf wheel beside it, servebench (git archive) ->
#     /tmp/llcuda/src, the llama.cpp CUDA build restored by llamacpp_cuda.sh, convert_hf_to_gguf.py's tree;
#   - phase model: `bench models random` on the GPU, into the folder benchmarks/gpu/models-8b.yaml names;
#   - phase gguf: `bench models prepare llama-3.1-8b-random` (F16, then Q8_0 and Q4_K_M from it);
#   - phases llamacpp, vllm, transformers: `bench run --only` those cells, one run folder (a new run, then
#     --resume), each started only with time enough for it and stopped with SIGINT (bench run then stops its
#     server: a SIGTERMed run would leave vLLM holding the GPU) in time to pack the run folder into
#     $OUT/seed-table-8b-run.tar.gz.
# A cell with a cell.json that says ok or failed is not run again; RETRY=1 lets --resume retry the failed ones.
# Settings: PHASES (default "model gguf llamacpp vllm transformers"), CALL_LIMIT_S (what is left of the device
# call when the script starts, default 570), RUN_ID, RESUME_FROM (a run folder in the working tree to continue),
# VLLM_MIN_S (seconds a vLLM phase needs to start: 420 before the first vLLM start on this machine, which
# compiles, else 240), TOKENIZER (default: the carried SmolLM2 tokenizer).
set -uo pipefail
REPO=$PWD
PHASES=${PHASES:-model gguf llamacpp vllm transformers}
W=/tmp/llcuda   # llamacpp_cuda.sh's: the CUDA build's GGML_BACKEND_DIR is baked in under it
OUTDIR=${OUT:-$W/out}
LIMIT=${CALL_LIMIT_S:-570}
ST=${STAGE:-.stage/seed-8b}
BASE=llama-3.1-8b-random
mkdir -p "$W" "$OUTDIR"
LOG=$OUTDIR/seed-table-8b.log
# shellcheck source=benchmarks/gpu/seed_common.sh
source "$(dirname "$0")/seed_common.sh"

XFER_DIR=${XFER_DIR:-.stage/xfer-8b} bash benchmarks/gpu/xfer.sh take 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { say "not every part is here yet: call again with the next one"; exit 0; }
WITH_VLLM=1 stage_unpack
restore_llamacpp
VENDOR=$SERVEBENCH_CACHE/src/llama-cpp-python-0.3.36/vendor
if [ ! -f "$VENDOR/llama.cpp/convert_hf_to_gguf.py" ] && [ -f "$ST/llama.cpp-convert.tar.xz" ]; then
    mkdir -p "$VENDOR" && tar -xJf "$ST/llama.cpp-convert.tar.xz" -C "$VENDOR" && say "convert_hf_to_gguf.py in place"
fi
[ -d "$W/tok" ] || tar -xJf "$ST/tok.tar.xz" -C "$W"

SRC=$W/src
cd "$SRC" || exit 1
export PYTHONPATH=/tmp/site:$SRC SERVEBENCH_MODELS=$W/models-8b.yaml
cp benchmarks/gpu/models-8b.yaml "$SERVEBENCH_MODELS"
HF=$SERVEBENCH_CACHE/models/random/$BASE   # where models-8b.yaml says the base is
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
wants() { [[ " $PHASES " == *" $1 "* ]]; }

if wants model && [ ! -f "$HF/config.json" ]; then
    say "bench models random $BASE (llama-3.1-8b shape, weights drawn on the GPU)"
    cp models.yaml "$W/scratch-models.yaml"  # the entry it appends is not used: models-8b.yaml names the folder
    timeout -s INT $((LIMIT - SECONDS - 60)) python3 -m bench models random "$BASE" --shape llama-3.1-8b \
        --tokenizer "${TOKENIZER:-$W/tok}" --out "$HF" --device cuda --registry "$W/scratch-models.yaml" 2>&1 \
        | grep -v Warning | tail -5 | tee -a "$LOG"
    say "model: $(du -sh "$HF" | cut -f1)"
fi
GG=$SERVEBENCH_CACHE/models/random/gguf
if wants gguf && [ -f "$HF/config.json" ] && [ ! -f "$GG/$BASE-q4_k_m.gguf" ]; then
    say "bench models prepare $BASE (GGUF F16, then Q8_0 and Q4_K_M) on this machine"
    prepare_ggufs "$BASE" "$SERVEBENCH_MODELS" 60
    say "GGUFs: $(ls "$GG" 2>/dev/null | tr '\n' ' ')"
    { ls -l "$GG"; df -h "$W"; } 2>&1 | tee -a "$LOG"
fi

RUNS=$W/runs
RUN_ID=${RUN_ID:-gpu-seed-table-8b}
RUN_DIR=$RUNS/$RUN_ID
MATRIX=benchmarks/gpu/seed-table-8b.yaml
mkdir -p "$RUNS"
continue_run || exit 1
# pending CELL...: the cells not run yet: no cell.json, or skipped (--resume looks again at why); with RETRY=1
# also the failed ones (else a cell that fails would be retried first in every call).
pending() {
    local cell f again='"status": *"skipped"'
    [ "${RETRY:-0}" = 1 ] && again='"status": *"(skipped|failed)"'
    for cell in "$@"; do
        f=$RUN_DIR/cells/$cell/cell.json
        if [ ! -f "$f" ] || grep -qE "$again" "$f"; then echo "$cell"; fi
    done
}
# phase NAME MIN_S CELL...: run the pending cells of a phase if it is asked for and MIN_S seconds are left.
phase() {
    local name=$1 min_s=$2 todo
    shift 2
    wants "$name" || return 0
    mapfile -t todo < <(pending "$@")
    if [ ${#todo[@]} = 0 ]; then say "$name: every cell has run"; return 0; fi
    if [ $((LIMIT - SECONDS)) -lt "$min_s" ]; then say "$name: ${#todo[@]} cells left, too little time (need ${min_s}s)"; return 0; fi
    # vLLM needs more than a minute to stop after the SIGINT (one call in session 7 ran 65 s past it and lost
    # its packing): its phase stops 120 s before the limit, the others 45 s.
    local reserve=45
    [ "$name" = vllm ] && reserve=120
    run_cells "$name" "$reserve" "${todo[@]}"
}
if [ -f "$GG/$BASE-q4_k_m.gguf" ]; then
    phase llamacpp 150 "llamacpp__$BASE-q8_0__gpu__s0" "llamacpp__$BASE-q4_k_m__gpu__s0" "llamacpp__$BASE-f16__gpu__s0"
fi
# the first vLLM start on a machine compiles its graphs and JITs kernels (~220 s on the H100)
[ -d "${VLLM_CACHE_ROOT:-$HOME/.cache/vllm}" ] && VLLM_MIN=240 || VLLM_MIN=420
[ -f "$HF/config.json" ] && phase vllm "${VLLM_MIN_S:-$VLLM_MIN}" "vllm__${BASE}__gpu__s0" "vllm__${BASE}__gpu-fp8__s0" \
    "vllm__${BASE}-bnb-4bit__gpu__s0"
[ -f "$HF/config.json" ] && phase transformers 200 "transformers__${BASE}__gpu__s0"
if [ -d "$RUN_DIR" ]; then pack_run seed-table-8b-run.tar.gz; fi
say done
