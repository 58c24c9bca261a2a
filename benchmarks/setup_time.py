"""Cold and warm setup time of ``python3 -m bench.bootstrap setup``, per step, in a fresh clone.

- cold: a fresh clone with an empty servebench cache (``$SERVEBENCH_CACHE``, ``$SERVEBENCH_VENVS``) and pip's
  cache switched off, so every package is fetched and llama.cpp is compiled anew (Debian's Chromium is
  installed system-wide and is not removed); with ``--pip-cache``, pip's wheel cache is used as it is (a
  machine that has installed these packages before, as CI's repeat runs do);
- warm: the same clone set up again, everything cached.

Each run's per-step seconds come from the bootstrap's own record (``.venv/setup-times.json``)::

    python3 benchmarks/setup_time.py                 # prints a markdown table; --json FILE keeps the numbers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup(clone: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    started = time.monotonic()
    with log.open("ab") as fh:
        subprocess.run([sys.executable, "-m", "bench.bootstrap", "setup"], cwd=clone, env=env, stdout=fh,
                       stderr=subprocess.STDOUT, check=True)
    times: dict[str, float] = json.loads((clone / ".venv" / "setup-times.json").read_text())
    times["wall"] = round(time.monotonic() - started, 1)
    return times


def _table(runs: dict[str, dict[str, float]]) -> str:
    steps = list(dict.fromkeys(step for times in runs.values() for step in times))
    lines = ["| step | " + " | ".join(f"{name} (s)" for name in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    lines += [f"| {step} | " + " | ".join(f"{runs[name].get(step, 0):.0f}" for name in runs) + " |"
              for step in steps]
    return "\n".join(lines)


def main() -> None:
    """Clone, set up cold, set up warm, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--workdir", type=Path, help="where to clone (default: a temporary folder)")
    parser.add_argument("--pip-cache", action="store_true", help="let pip use its wheel cache (default: off)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="servebench-setup-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "SERVEBENCH_CACHE": str(work / "cache"), "SERVEBENCH_VENVS": str(work / "venvs")}
    if not args.pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    log = work / "setup.log"
    runs = {"cold": _setup(clone, env, log)}
    runs["warm"] = _setup(clone, env, log)
    pip = "pip's wheel cache used" if args.pip_cache else "pip's cache off"
    print(f"{os.cpu_count()} cores; {pip}; load average {os.getloadavg()[0]:.1f}; clone and caches in {work}; "
          f"log: {log}\n")
    print(_table(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
