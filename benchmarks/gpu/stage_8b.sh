#!/usr/bin/env bash
# Here, on the CPU machine: stage what benchmarks/gpu/seed_table_8b.sh needs on the device (the GPU seed table's
# part 2, benchmarks/gpu/seed-table-8b.yaml) and pack it, with the vLLM bundle and the llama.cpp CUDA build, into
# parts that fit beside the working tree without reports/ (benchmarks/gpu/xfer.sh; move reports/ out of the tree for the
# calls). Run it after the last commit the device should run (src.tar.gz is `git archive HEAD`).
#   .stage/seed-8b/src.tar.gz               servebench at HEAD, without reports/ and tests/
#   .stage/seed-8b/py.tar.gz                llama-cpp-python's Python part (llcpy/llama_cpp, no lib/): it runs over
#                                           the CUDA build's libllama for llama_model_quantize
#   .stage/seed-8b/whl/                     the gguf and bitsandbytes wheels (beside the vLLM bundle, which has the
#                                           server stack)
#   .stage/seed-8b/tok.tar.xz               SmolLM2's HF tokenizer files, for the random model
#   .stage/seed-8b/llama.cpp-convert.tar.xz convert_hf_to_gguf.py, conversion/ and gguf-py/ of llama.cpp (0.3.36's
#                                           vendored tree: all that `bench models prepare` runs of it; 0.3 MB)
# Needs, staged before: .stage/vllm (shared/device/stage-vllm.sh) and .stage/llamacpp-cuda/build (the CUDA build's
# parts, benchmarks/gpu/README.md "llama.cpp with CUDA"). Writes .stage/xfer-8b/{manifest,partNN}.
set -euo pipefail
S=.stage/seed-8b
VENDOR=${SERVEBENCH_CACHE:-$HOME/.cache/servebench}/src/llama-cpp-python-0.3.36/vendor
SITE=$(.venv/bin/python -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
TOK=${TOKENIZER:-$(.venv/bin/bench models show smollm2-135m-instruct-hf 2>/dev/null | sed -n 's/^resolved_path: *//p' | head -1)}
for need in .stage/vllm/part00 .stage/llamacpp-cuda/build/llamacpp-cuda-build.tar.xz.sha256 \
            "$VENDOR/llama.cpp/convert_hf_to_gguf.py" "$TOK/tokenizer.json"; do
    [ -e "$need" ] || { echo "missing $need (see benchmarks/gpu/README.md; TOKENIZER=DIR names a tokenizer folder)" >&2; exit 1; }
done
rm -rf "$S" && mkdir -p "$S/whl" "$S/tmp/llcpy"
git archive HEAD -- . ':(exclude)reports' ':(exclude)tests' | gzip -9 > "$S/src.tar.gz"
cp -r "$SITE/llama_cpp" "$S/tmp/llcpy/" && rm -rf "$S/tmp/llcpy/llama_cpp/lib"
tar -C "$S/tmp" --exclude=__pycache__ -czf "$S/py.tar.gz" llcpy
GGUF_VERSION=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('gguf'))")
if ls .stage/seed-vllm/whl/gguf-"$GGUF_VERSION"-*.whl > /dev/null 2>&1; then
    cp .stage/seed-vllm/whl/gguf-"$GGUF_VERSION"-*.whl "$S/whl/"
else
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$S/whl" "gguf==$GGUF_VERSION"
fi
# bitsandbytes, for vLLM's 4-bit cell (NF4 at load; vLLM 0.25 wants >= 0.48.1; the wheel carries its CUDA 13 kernels)
BNB=$(.venv/bin/python -c "from backends.vllm.venv import BITSANDBYTES_VERSION as v; print(v)")  # the venv's pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d "$S/whl" "bitsandbytes==$BNB"
mkdir -p "$S/tmp/tok" && cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$S/tmp/tok/"
[ -f "$TOK/chat_template.jinja" ] && cp "$TOK/chat_template.jinja" "$S/tmp/tok/"
tar -C "$S/tmp" -cJf "$S/tok.tar.xz" tok
tar -C "$VENDOR" --exclude=__pycache__ --exclude=./llama.cpp/gguf-py/tests -cJf "$S/llama.cpp-convert.tar.xz" \
    ./llama.cpp/convert_hf_to_gguf.py ./llama.cpp/conversion ./llama.cpp/gguf-py
rm -rf "$S/tmp"
du -ab "$S" | sort -k2
# The run folder travels as .stage/kept/$RUN_DIR (seed_common.sh's continue_run): the tree with reports/ is more than
# a call carries (80 MB in December 2026), so reports/ is out of the tree for the device calls, as for part 1.
RUN_DIR=${RUN_DIR:-reports/gpu-seed-table-8b-h100/gpu-seed-table-8b}
rm -rf ".stage/kept/$RUN_DIR" && mkdir -p ".stage/kept/$(dirname "$RUN_DIR")" && cp -r "$RUN_DIR" ".stage/kept/$RUN_DIR"
tree=$(git ls-files -z -- ':(exclude)reports' | du -c -B1 --files0-from=- | tail -1 | cut -f1)
PART_BYTES=$((64 * 1048576 - tree - 262144)) bash benchmarks/gpu/xfer.sh pack .stage/xfer-8b .stage/vllm \
    .stage/llamacpp-cuda/build "$S" ".stage/kept/$RUN_DIR"
