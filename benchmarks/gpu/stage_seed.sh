#!/usr/bin/env bash
# Here, on the CPU machine: stage and pack what benchmarks/gpu/seed_table_llamacpp.sh needs on the device for the
# GPU seed table's part 1 (benchmarks/gpu/seed-table.yaml), the way session 8 carried it: one tar in parts of
# 64 MiB less the working tree *without* reports/ (move reports/ out of the tree for the device calls; the run
# folder to resume travels inside the tar instead). Run it after the last commit the device should run.
#   .stage/seed-vllm/src.tar.gz          servebench at HEAD, without reports/ and tests/
#   .stage/seed-quant/models.tar.xz      the checkpoints QUANT_MODELS name, as they lie under the cache's models/
#   .stage/seed-quant/models.quant.yaml  their registry entries (recipes included), appended on the device
#   .stage/seed-vllm/whl/bitsandbytes-*  for the bnb-4bit cell
#   .stage/seed-vllm/whl-exl2/           exllamav2 and its two small dependencies (exllama_wheels.sh), for the
#                                        ExLlamaV2 cells (ENGINE=exllamav2; installed only by those calls)
#   RUN_DIR (default reports/gpu-seed-table-h100/gpu-seed-table), the run folder the device continues (empty: none)
# Settings: QUANT_MODELS (registry names; default the five `bench quantize` outputs the matrix lists), QUANT_REGISTRY
# (the models.yaml `bench quantize` appended them to; default the repository's), RUN_DIR, DEST (default .stage/xfer1).
# Needs, staged before (benchmarks/gpu/stage_base.sh makes them in a fresh checkout): .stage/vllm,
# .stage/seed-vllm/{whl,py.tar.gz,derived.sha256}, .stage/llamacpp-cuda/{llama.cpp-src.tar.xz,gguf.part00,gguf.part01,
# gguf.sha256}, and where the device built it before, .stage/llamacpp-cuda/build.
set -euo pipefail
DEST=${DEST:-.stage/xfer1}
RUN_DIR=${RUN_DIR-reports/gpu-seed-table-h100/gpu-seed-table}
QUANT_REGISTRY=${QUANT_REGISTRY:-models.yaml}
QUANT_MODELS=${QUANT_MODELS:-smollm2-135m-instruct-hf-fp8 smollm2-135m-instruct-hf-w4a16 smollm2-135m-instruct-hf-gptq-4bit smollm2-135m-instruct-hf-awq-4bit smollm2-135m-instruct-hf-bnb-4bit}
CACHE=${SERVEBENCH_CACHE:-$HOME/.cache/servebench}
STAGED=(.stage/vllm .stage/seed-vllm/whl .stage/seed-vllm/py.tar.gz .stage/seed-vllm/derived.sha256
        .stage/llamacpp-cuda/gguf.part01 .stage/llamacpp-cuda/gguf.sha256)
# The llama.cpp CUDA build, where one was brought back (llamacpp_cuda.sh PACK_BUILD=1), travels in the tar with the
# source and the GGUF's first part. Without it (a fresh checkout: stage_base.sh makes the rest) the device compiles
# it: the source and that part stay out of the tar, for call 1 to carry and start the build with, which then runs
# (about 5 min) while the later calls carry the tar.
FIRST=(.stage/llamacpp-cuda/llama.cpp-src.tar.xz .stage/llamacpp-cuda/gguf.part00 .stage/llamacpp-cuda/gguf.sha256)
if [ -f .stage/llamacpp-cuda/build/llamacpp-cuda-build.tar.xz.sha256 ]; then
    STAGED+=(.stage/llamacpp-cuda/build "${FIRST[@]:0:2}")
    FIRST=()
fi
for need in "${STAGED[@]}" "${FIRST[@]}" ${RUN_DIR:+"$RUN_DIR/run.yaml"} "$QUANT_REGISTRY"; do
    [ -e "$need" ] || { echo "missing $need (see benchmarks/gpu/README.md)" >&2; exit 1; }
done

git archive HEAD -- . ':(exclude)reports' ':(exclude)tests' | gzip -9 > .stage/seed-vllm/src.tar.gz
Q=.stage/seed-quant
rm -rf "$Q" && mkdir -p "$Q"
# bitsandbytes, for the bnb-4bit cell (vLLM quantizes the bf16 weights to NF4 as it loads them)
BNB=$(.venv/bin/python -c "from backends.vllm.venv import BITSANDBYTES_VERSION as v; print(v)")  # the venv's pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d .stage/seed-vllm/whl "bitsandbytes==$BNB"
# shellcheck source=benchmarks/gpu/exllama_wheels.sh
source "$(dirname "$0")/exllama_wheels.sh"
rm -rf .stage/seed-vllm/whl-exl2 && download_wheels .stage/seed-vllm/whl-exl2 "${EXL2_WHEELS[@]}"
# The entries, and each checkpoint's folder relative to the cache's models/ (an entry elsewhere cannot be carried:
# the device resolves {cache} to its own cache). An entry quantized at load names its source's weights, which the
# device derives itself: it travels as an entry only.
folders=$(.venv/bin/python - "$QUANT_REGISTRY" "$Q/models.quant.yaml" $QUANT_MODELS <<'EOF'
import sys

import yaml

registry, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
entries = {e["name"]: e for e in yaml.safe_load(open(registry))["models"]}
missing = [n for n in names if n not in entries]
if missing:
    sys.exit(f"not in {registry}: {', '.join(missing)} (make them with the bench quantize commands in "
             "benchmarks/gpu/seed-table.yaml's header, or name QUANT_REGISTRY)")
picked = [entries[n] for n in names]
for e in picked:
    if (e.get("recipe") or {}).get("load_time"):
        continue
    if not str(e.get("path", "")).startswith("{cache}/models/"):
        sys.exit(f"{e['name']}: path {e.get('path')!r} is not under {{cache}}/models/, so it cannot be carried")
    print(e["path"].removeprefix("{cache}/models/"))
text = yaml.safe_dump(picked, sort_keys=False, allow_unicode=True, width=120)
open(out, "w").write("".join(f"  {line}\n" for line in text.splitlines()))
EOF
)
# shellcheck disable=SC2086
tar -C "$CACHE/models" -cf - $folders | xz -T2 -6 > "$Q/models.tar.xz"
# The run folder travels as .stage/kept/$RUN_DIR: under reports/ it would be removed by the next call's copy of the
# working tree (reports/ is out of the tree for these calls), and a later call's RESUME_FROM would find no run.yaml
# (session 10 lost run.yaml's history so). seed_table_llamacpp.sh looks for RESUME_FROM there.
# RUN_DIR= (empty): no run folder travels, for a new RUN_ID.
KEPT=()
if [ -n "$RUN_DIR" ]; then
    rm -rf ".stage/kept/$RUN_DIR" && mkdir -p ".stage/kept/$(dirname "$RUN_DIR")" && cp -r "$RUN_DIR" ".stage/kept/$RUN_DIR"
    KEPT=(".stage/kept/$RUN_DIR")
fi
tree=$(git ls-files -z -- ':(exclude)reports' | du -c -B1 --files0-from=- | tail -1 | cut -f1)
PART_BYTES=$((64 * 1048576 - tree - 262144)) bash benchmarks/gpu/xfer.sh pack "$DEST" .stage/seed-vllm/src.tar.gz \
    "${STAGED[@]}" .stage/seed-vllm/whl-exl2 "$Q" "${KEPT[@]}"
if [ ${#FIRST[@]} -gt 0 ]; then
    printf -v carry '"%s", ' "${FIRST[@]}"
    echo "no CUDA build staged: call 1 carries [${carry%, }] with the command"
    echo "  CALL_LIMIT_S=5 bash benchmarks/gpu/llamacpp_cuda.sh   (starts the build on the device)"
fi
echo "carry ${DEST}/manifest with one part a call, with reports/ moved out of the tree (benchmarks/gpu/README.md)"
