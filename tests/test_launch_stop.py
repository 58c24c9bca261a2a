"""Stopping a launched server leaves nothing it forked behind (servers.launch._terminate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servers.launch import _terminate, spawn_server

# A stand-in for a native server: it forks a worker that ignores SIGINT and SIGTERM (as a busy engine
# core may), prints the worker's PID, and exits on SIGINT itself, leaving the worker behind.
SERVER = """
import os, signal, subprocess, sys, time
deaf = "import signal, time; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]"
worker = subprocess.Popen([sys.executable, "-c", deaf + "; time.sleep(60)"])
try:  # before the PID is printed: the test signals as soon as it reads it
    print(worker.pid, flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    sys.exit(0)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone for our purposes
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_stop_ends_the_server_and_what_it_forked() -> None:
    proc = spawn_server([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    assert _alive(worker)
    _terminate(proc, grace_s=20.0)
    assert proc.returncode == 0  # SIGINT first: the server drained and exited by itself
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def test_a_server_drains_on_sigint_even_when_we_were_started_ignoring_it() -> None:
    """``cmd &`` in a non-interactive shell starts us with SIGINT ignored, and children inherit that; a Python
    server then never sees the draining SIGINT (CI once SIGTERMed it after the grace). ``spawn_server`` resets it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = spawn_server([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    _terminate(proc, grace_s=20.0)
    assert proc.returncode == 0
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
