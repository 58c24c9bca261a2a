#!/usr/bin/env bash
# vLLM tensor parallelism on a two-GPU device machine (issue #7): a random-weight Llama-3.1-8B shape served
# with TP=1, then TP=2, under the same `bench run` sweep (benchmarks/gpu/tp-scaling.yaml).
#
# Run after vLLM is staged into /tmp/site (shared/device/README.md), each call right after the last:
#   bash benchmarks/gpu/tp_scaling.sh tp1   carry [".stage/tok"] (an HF tokenizer folder: SmolLM2's)
#   bash benchmarks/gpu/tp_scaling.sh tp2   the same warm machine (/tmp/tp survives between calls)
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
  time python3 -m bench models random "$model" --shape llama-3.1-8b --tokenizer .stage/tok \
    --out "$work/models/$model" --device cuda
fi
# SIGINT at the limit: bench run stops its server (a SIGTERMed run would leave vLLM holding the GPUs).
rc=0
case $step in
  tp1) timeout -s INT "${RUN_LIMIT_S:-500}" python3 -m bench run benchmarks/gpu/tp-scaling.yaml \
         --out "$work/reports" --run-id "$run_id" --only '*tp1*' 2>&1 | tee "$out/run-$step.log" || rc=$? ;;
  tp2) timeout -s INT "${RUN_LIMIT_S:-500}" python3 -m bench run --resume "$work/reports/$run_id" 2>&1 \
         | tee "$out/run-$step.log" || rc=$? ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
tar -czf "$out/tp-scaling.tar.gz" -C "$work/reports" "$run_id"
ls -la "$out"
exit "$rc"
