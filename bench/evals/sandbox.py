"""Run untrusted generated Python in a throw-away subprocess.

Layers, each applied where the machine allows it (``SandboxInfo`` records which were in force):

- no network: the child runs under ``unshare --net`` (a new, empty network namespace); where that is not
  permitted, :func:`probe_sandbox` refuses unless the caller explicitly allows running with the network;
- an empty temporary working directory, deleted afterwards, and a stripped environment;
- ``python -I`` (isolated mode: no user site, no ``PYTHON*`` variables);
- resource limits: CPU seconds, address space, file size, open files, no core dumps;
- when started as root, the child drops to ``nobody`` inside the namespace;
- a wall-clock timeout that kills the child's whole process group.

This is defence in depth for benchmark code, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NOBODY_ID = 65534
_MEMORY_BYTES = 1 << 30
_FILE_BYTES = 16 << 20
_OPEN_FILES = 64
ExecStatus = Literal["passed", "failed", "timeout"]


@dataclass(frozen=True)
class SandboxInfo:
    """Which isolation layers work on this machine, and the interpreter that runs under them."""

    python: str
    network_namespace: bool
    drop_to_nobody: bool

    def describe(self) -> str:
        """Short human-readable summary for the eval summary."""
        layers = ["tmpdir", "env-stripped", "rlimits", "timeout"]
        layers += ["no-network(unshare)"] if self.network_namespace else ["NETWORK-NOT-ISOLATED"]
        layers += ["uid-nobody"] if self.drop_to_nobody else []
        return ",".join(layers)

    def prefix(self) -> list[str]:
        """The command that wraps the interpreter."""
        if not self.network_namespace:
            return []
        if self.drop_to_nobody:  # root: enter the namespace, then become nobody inside it
            ids = ["--setgid", str(NOBODY_ID), "--setuid", str(NOBODY_ID)]
            return ["unshare", "--net", *ids]
        if os.geteuid() == 0:
            return ["unshare", "--net"]
        return ["unshare", "--map-root-user", "--net"]  # a user namespace gives non-root a netns


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: passed means exit status 0 within the time limit."""

    status: ExecStatus
    detail: str

    @property
    def passed(self) -> bool:
        """True when the program ran to completion without an error."""
        return self.status == "passed"


def _works(info: SandboxInfo) -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        command = [*info.prefix(), info.python, "-I", "-c", "pass"]
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    return False


class SandboxUnavailableError(RuntimeError):
    """The sandbox cannot cut the network off here, and running without that was not allowed."""


def _no_network_message() -> str:
    why = ("`unshare --net` is not permitted (it needs root or unprivileged user namespaces)"
           if shutil.which("unshare") else "`unshare` (util-linux) is not installed")
    return (
        f"the code sandbox cannot isolate the network here: {why}, so model-written code would run with "
        "network access. Run where user namespaces are allowed, or pass --allow-network-in-sandbox "
        "(allow_network_in_sandbox: true in a matrix) to run it anyway"
    )


def probe_sandbox(*, allow_network: bool = False) -> SandboxInfo:
    """The strongest configuration that runs here (``unshare --net`` needs root or user namespaces).

    ``nobody`` cannot always execute the current interpreter (a venv under ``/root``), so the system
    ``python3`` is tried as well: generated code needs only the standard library. Where no configuration
    with a network namespace works, :class:`SandboxUnavailableError` is raised unless ``allow_network``.
    """
    pythons = [sys.executable] + [p for p in [shutil.which("python3", path="/usr/bin:/bin")] if p]
    candidates = [SandboxInfo(py, True, True) for py in pythons] if os.geteuid() == 0 else []
    candidates.append(SandboxInfo(sys.executable, True, False))
    if shutil.which("unshare"):
        for info in candidates:
            if _works(info):
                return info
    if not allow_network:
        raise SandboxUnavailableError(_no_network_message())
    return SandboxInfo(sys.executable, False, False)


def _limit_child(cpu_seconds: int) -> None:
    """Runs in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_BYTES, _MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_BYTES, _FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_OPEN_FILES, _OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _command(script: Path, info: SandboxInfo) -> list[str]:
    return [*info.prefix(), info.python, "-I", "-B", str(script)]


def _write_script(workdir: Path, program: str) -> Path:
    workdir.chmod(0o777)  # nobody must be able to write its own scratch files here
    script = workdir / "program.py"
    script.write_text(program, encoding="utf-8")
    script.chmod(0o644)
    return script


async def run_python(program: str, *, timeout_s: float, info: SandboxInfo) -> ExecResult:
    """Execute ``program`` under the sandbox; passed if it exits 0 before ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        script = _write_script(Path(tmp), program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        cpu = max(1, int(timeout_s) + 1)
        proc = await asyncio.create_subprocess_exec(
            *_command(script, info),
            cwd=tmp,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _limit_child(cpu),
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return ExecResult("timeout", f"killed after {timeout_s:g}s")
        tail = stderr.decode("utf-8", "replace")[-500:]
        return ExecResult("passed" if proc.returncode == 0 else "failed", tail)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
