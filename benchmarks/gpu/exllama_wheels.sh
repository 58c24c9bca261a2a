# shellcheck shell=bash
# Sourced (not run) by stage_exllama.sh and stage_seed.sh: the exllamav2 wheels the GPU machine needs and the one
# way to download Python 3.12 wheels for it. PYTHON is the interpreter whose pip downloads (default .venv's).
# EXL2_WHEELS: exllamav2 (the pin of pyproject's extra) and the two small dependencies the device image and the
# vLLM bundle lack (fastparquet reads the converter's calibration parquet; cramjam is fastparquet's codec
# library). Everything else it imports (torch, pandas, ninja, safetensors, ...) is in the image.
# shellcheck disable=SC2034  # used by the scripts that source this
EXL2_WHEELS=(exllamav2==0.3.2 fastparquet==2024.11.0 cramjam==2.11.0)

# download_wheels DEST SPEC...: cp312 manylinux x86_64 wheels, without their dependencies, into DEST.
download_wheels() {
    local dest=$1
    shift
    "${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$dest" "$@"
}
