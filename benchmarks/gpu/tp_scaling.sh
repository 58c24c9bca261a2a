#!/usr/bin/env bash
# vLLM tensor parallelism on a two-GPU device machine (issue #7): a random-weight Llama-3.1-8B shape served
# with TP=1, then TP=2, under the same `bench run` sweep (benchmarks/gpu/tp-scaling.yaml).
#
# Run after vLLM is staged into /tmp/site (shared/device/README.md), each call right after the last:
#   TOKENIZER=DIR bash benchmarks/gpu/tp_scaling.sh tp1   DIR: an HF tokenizer folder (SmolLM2's, carried)
#   bash benchmarks/gpu/tp_scaling.sh tp2                 the same warm machine (/tmp/tp survives)
# (`rest` resumes every unfinished cell.) CALL_LIMIT_S (default 580) is what is left of the device call when
# the script starts; the run gets SIGINT before it ends, so the folder still comes back.
# Each call returns the run folder as $OUT/tp-scaling.tar.gz; here, `bench report` rebuilds the report:
#   tar -xzf tp-scaling.tar.gz -C /tmp && bench report /tmp/tp-scaling-h200x2 --out reports/tp-scaling-h200x2
set -euo pipefail
step=${1:?usage: tp_scaling.sh tp1|tp2}
work=/tmp/tp
run_id=tp-scaling-h200x2
model=llama-3.1-8b-random
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SERVEBENCH_CACHE=$work/cache SERVEBENCH_MODELS=$work/models.yaml
# NVLink multicast stays off on shared hosts (the device README); servebench's vLLM launcher sets these too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv | tee "$out/gpus-$step.csv"
[ -f "$work/models.yaml" ] || cp models.yaml "$work/models.yaml"
if ! python3 -m bench models show "$model" >/dev/null 2>&1; then
  time python3 -m bench models random "$model" --shape llama-3.1-8b --tokenizer "${TOKENIZER:-.stage/tok}" \
    --out "$work/models/$model" --device cuda
fi
# SIGINT at the limit: bench run stops its server (a SIGTERMed run would leave vLLM holding the GPUs).
limit=$(( ${CALL_LIMIT_S:-580} - SECONDS - 20 ))
rc=0
case $step in
  tp1) args=(benchmarks/gpu/tp-scaling.yaml --out "$work/reports" --run-id "$run_id" --only '*tp1*') ;;
  tp2) args=(--resume "$work/reports/$run_id" --only '*tp2*') ;;
  rest) args=(--resume "$work/reports/$run_id") ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
timeout -s INT "$limit" python3 -m bench run "${args[@]}" 2>&1 | tee "$out/run-$step.log" || rc=$?
tar -czf "$out/tp-scaling.tar.gz" -C "$work/reports" "$run_id"
ls -la "$out"
exit "$rc"
