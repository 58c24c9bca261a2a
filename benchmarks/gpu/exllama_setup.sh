#!/usr/bin/env bash
# Device call 1 of the ExLlama run (see benchmarks/gpu/README.md): install the staged wheels into
# /tmp/exl/site, stash the first GGUF part, and start the two JIT kernel builds detached (setsid), so they
# go on between calls while the machine stays warm: exllamav2 first at full priority, exllamav3 niced.
# Usage: bash benchmarks/gpu/exllama_setup.sh [v2|v3|both]   (default both; one build gets all the cores)
set -euo pipefail
builds=${1:-both}
stage=.stage/exllama
mkdir -p /tmp/exl/stash /tmp/exl/site /tmp/exl/logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/exl/site \
  "$stage"/whl/*.whl $(ls "$stage"/whl-v3/*.whl 2>/dev/null)  # whl-v3: carried only when V3 runs
cp "$stage"/gguf/* /tmp/exl/stash/ 2>/dev/null || true  # whichever GGUF parts this call carries
cat > /tmp/exl/build.sh <<'EOS'
export PYTHONPATH=/tmp/exl/site MAX_JOBS=$(( $(nproc) > 16 ? $(nproc) - 2 : 16 )) TORCH_CUDA_ARCH_LIST=9.0
cd /tmp/exl
[ "$BUILDS" = v3 ] || ( s=$(date +%s); python3 -c "import exllamav2.ext" > logs/build_v2.log 2>&1; echo "rc=$? s=$(( $(date +%s) - s ))" > logs/v2.done ) &
[ "$BUILDS" = v2 ] || ( s=$(date +%s); nice -n $([ "$BUILDS" = v3 ] && echo 0 || echo 19) python3 -c "from exllamav3.ext import exllamav3_ext" > logs/build_v3.log 2>&1; echo "rc=$? s=$(( $(date +%s) - s ))" > logs/v3.done ) &
wait
EOS
BUILDS=$builds setsid nohup bash /tmp/exl/build.sh > /tmp/exl/logs/build.out 2>&1 < /dev/null &
echo $! > /tmp/exl/build.pid; echo "builds started (pid $!)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
