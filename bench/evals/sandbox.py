"""Run untrusted generated Python in a throw-away sandbox.

The isolated sandbox (the only one used unless the caller opts out) runs the program under
``unshare --user --map-root-user --pid --fork --kill-child --mount --net --ipc --uts``; started as root,
servebench first becomes ``nobody`` (``setpriv``), so the namespace's root is ``nobody`` outside. Inside,
:mod:`bench.evals.sandbox_init` builds a private root of read-only system folders and a fresh 0700
``/tmp`` (the only writable place and the working folder), ``pivot_root``s into it and detaches the host's
tree (so neither the repository nor any home folder can be read), sets rlimits on processes, address
space, file size, CPU time and open files, drops every capability and execs the system ``python3 -I``
on the program, which thereby is PID 1 of its namespace: when it exits, or the timeout kills ``unshare``
(whose ``--kill-child`` then kills it), every process it started dies with the namespace. The network
namespace is empty: no interface is up, so no socket connects anywhere.

Where that cannot be had (no ``unshare``, no user namespaces, no system python), :func:`probe_sandbox`
refuses with :class:`SandboxUnavailableError` unless the caller passes ``allow_weak=True``; the weak
sandbox keeps only the rlimits, a private 0700 temp folder, a stripped environment and the timeout, and
says so in :meth:`SandboxInfo.describe` (``WEAK``).

This is defence in depth for benchmark code, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

NOBODY_ID = 65534
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
NAMESPACES = ("--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc",
              "--uts")
ExecStatus = Literal["passed", "failed", "timeout"]


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one program (``cpu_s`` None: the wall-clock timeout plus one second)."""

    processes: int = 32
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64
    tmp_bytes: int = 64 << 20
    cpu_s: int | None = None

    def rlimits(self, timeout_s: float) -> dict[str, int]:
        """rlimit name to value, as ``resource`` names them."""
        cpu = self.cpu_s if self.cpu_s is not None else max(1, int(timeout_s) + 1)
        return {"RLIMIT_NPROC": self.processes, "RLIMIT_AS": self.memory_bytes, "RLIMIT_FSIZE": self.file_bytes,
                "RLIMIT_NOFILE": self.open_files, "RLIMIT_CORE": 0, "RLIMIT_CPU": cpu}


@dataclass(frozen=True)
class SandboxInfo:
    """How programs run here: isolated (namespaces and a private root) or weak (opted into), and by which python."""

    python: str
    isolated: bool
    binds: tuple[str, ...] = field(default=SYSTEM_FOLDERS)

    def describe(self) -> str:
        """Short human-readable summary of the layers in force, for the eval summary."""
        layers = ["rlimits", "private-tmp-0700", "env-stripped", "timeout"]
        if self.isolated:
            outer = "nobody" if os.geteuid() == 0 else "caller"
            return ",".join(["userns", f"outer-uid-{outer}", "pidns", "mountns-private-root", "netns-empty",
                             "no-capabilities", *layers])
        return ",".join(["WEAK-NO-NAMESPACES", *layers])

    def command(self, limits: dict[str, int], tmp_bytes: int) -> list[str]:
        """The isolated sandbox's command line (the program goes to its stdin)."""
        config = {"python": self.python, "binds": list(self.binds), "limits": limits, "tmp_bytes": tmp_bytes}
        drop = (["setpriv", f"--reuid={NOBODY_ID}", f"--regid={NOBODY_ID}", "--clear-groups", "--"]
                if os.geteuid() == 0 else [])
        init = init_source()
        return [*drop, "unshare", *NAMESPACES, self.python, "-I", "-S", "-B", "-c", init, json.dumps(config)]


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: ``passed`` means exit status 0 within the time limit."""

    status: ExecStatus
    detail: str
    stdout: str = ""

    @property
    def passed(self) -> bool:
        """True when the program exited with status 0 in time."""
        return self.status == "passed"


class SandboxUnavailableError(RuntimeError):
    """The isolated sandbox cannot run here, and running code less isolated was not allowed."""


def init_source() -> str:
    """The source of :mod:`bench.evals.sandbox_init`, passed with ``-c`` (the sandbox may not read files)."""
    return Path(__file__).with_name("sandbox_init.py").read_text(encoding="utf-8")


def _refusal(why: str) -> str:
    return (
        f"the code sandbox cannot isolate model-written code here: {why}. It needs util-linux `unshare` and "
        "`setpriv`, user namespaces (root, or kernel.unprivileged_userns_clone=1) and a system python3 "
        "under /usr. Run where those exist, or pass --allow-weak-sandbox (allow_weak_sandbox: true in a "
        "matrix) to run the code anyway with only rlimits, a private temp folder and a timeout"
    )


def _try_isolated(python: str) -> str | None:
    """None when the isolated sandbox runs a program with ``python``, else why not."""
    info = SandboxInfo(python, True)
    try:
        result = subprocess.run(info.command(SandboxLimits().rlimits(10), 1 << 20), input=b"print('ok')\n",
                                capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if result.returncode == 0 and result.stdout.strip() == b"ok":
        return None
    return f"exit status {result.returncode}: {result.stderr.decode('utf-8', 'replace').strip()[-300:]}"


def probe_sandbox(*, allow_weak: bool = False) -> SandboxInfo:
    """The isolated sandbox if it works here; else the weak one if ``allow_weak``, else refuse."""
    tools = ["unshare"] + (["setpriv"] if os.geteuid() == 0 else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    pythons = [p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)]
    why = (f"{' and '.join(missing)} not installed" if missing
           else "no system python3 under /usr" if not pythons else _try_isolated(pythons[0]))
    if why is None:
        return SandboxInfo(pythons[0], True)
    if not allow_weak:
        raise SandboxUnavailableError(_refusal(why))
    return SandboxInfo(sys.executable, False)


async def run_python(program: str, *, timeout_s: float, info: SandboxInfo,
                     limits: SandboxLimits | None = None) -> ExecResult:
    """Execute ``program`` in the sandbox; ``passed`` if it exits 0 before ``timeout_s``."""
    limits = limits or SandboxLimits()
    if info.isolated:
        return await _run_isolated(program, timeout_s, info, limits)
    return await _run_weak(program, timeout_s, limits)


async def _run_isolated(program: str, timeout_s: float, info: SandboxInfo, limits: SandboxLimits) -> ExecResult:
    proc = await asyncio.create_subprocess_exec(
        *info.command(limits.rlimits(timeout_s), limits.tmp_bytes),
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return await _finish(proc, program.encode("utf-8"), timeout_s)


async def _run_weak(program: str, timeout_s: float, limits: SandboxLimits) -> ExecResult:
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:  # mkdtemp: mode 0700
        script = Path(tmp) / "program.py"
        script.write_text(program, encoding="utf-8")
        # RLIMIT_NPROC would count every process of this user here (no user namespace of its own)
        rlimits = {k: v for k, v in limits.rlimits(timeout_s).items() if k != "RLIMIT_NPROC"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-B", str(script),
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _set_rlimits(rlimits),
        )
        return await _finish(proc, None, timeout_s)


async def _finish(proc: asyncio.subprocess.Process, stdin: bytes | None, timeout_s: float) -> ExecResult:
    """Wait for the program; on timeout kill its whole process group (``unshare`` takes its namespace along)."""
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout=timeout_s)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return ExecResult("timeout", f"killed after {timeout_s:g}s")
    tail = stderr.decode("utf-8", "replace")[-500:]
    return ExecResult("passed" if proc.returncode == 0 else "failed", tail, stdout.decode("utf-8", "replace")[-2000:])


def _set_rlimits(rlimits: dict[str, int]) -> None:
    """Runs in the weak sandbox's child between fork and exec."""
    for name, value in rlimits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
