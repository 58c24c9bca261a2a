#!/usr/bin/env bash
# Device call 2 (exllamav2) or 3 (exllamav3) of the ExLlama run, right after the previous call on the same
# warm machine: assemble the GGUF from its parts, then run benchmarks/gpu/exllama_measure.py ENGINE.
# Usage: bash benchmarks/gpu/exllama_run.sh exllamav2|exllamav3 [--quick | --random-shape SHAPE --tokenizer DIR]
#   --quick: the GPU tests on the fp16 HF checkpoint only (no conversion, no timing)
set -uo pipefail
engine=$1; shift
stash=/tmp/exl/stash gguf=/tmp/exl/stash/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ " $* " != *" --random-shape "* ]] && [ ! -f "$gguf" ]; then
  cp .stage/exllama/gguf/* "$stash"/ 2>/dev/null  # the parts this call carries; earlier calls left theirs
  cat "$stash"/part* > "$gguf.tmp"
  if ! echo "$(cat "$stash"/sha256)  $gguf.tmp" | sha256sum -c --status; then
    echo "GGUF incomplete: the stash has $(cd "$stash" && echo part*); carry the other parts"; exit 1
  fi
  mv "$gguf.tmp" "$gguf"
fi
export PYTHONPATH=/tmp/exl/site:$PWD PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
# exllamav2 0.3.2's SDPA path drops the causal mask (see backends/exllamav2/engine.py); the converter's
# calibration forward needs the library's switch too.
export EXLLAMA_NO_SDPA=1
python3 benchmarks/gpu/exllama_measure.py "$engine" --out "$OUT" "$@" 2>&1 | tee "$OUT/${engine}_run.log"
rc=${PIPESTATUS[0]}
tail -c 200000 /tmp/exl/logs/convert_"$engine".log > "$OUT/convert_${engine}.log" 2>/dev/null
v=${engine#exllama}; tail -c 100000 /tmp/exl/logs/build_"$v".log > "$OUT/build_${v}.log" 2>/dev/null
cat /tmp/exl/logs/*.done 2>/dev/null; uptime
exit "$rc"
