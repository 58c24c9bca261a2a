"""The code sandbox and HumanEval's pass rule, attacked from inside: every escape below must fail.

Each test runs real programs through :func:`bench.evals.sandbox.run_python` (namespaces, private root,
rlimits) and then looks at the host (its process table, its files, a listening socket) for a trace.
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from bench.evals.config import EvalConfig
from bench.evals.runner import EvalSetupError, run_eval
from bench.evals.sandbox import (
    ExecResult,
    SandboxInfo,
    SandboxLimits,
    SandboxUnavailableError,
    probe_sandbox,
    run_python,
)
from bench.evals.tasks.base import Reply
from bench.evals.tasks.humaneval import HumanEvalDoc, HumanEvalTask

REPO = Path(__file__).resolve().parents[1]
ADD = HumanEvalDoc("t/0", "def add(a, b):\n    '''Add.'''\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")


@pytest.fixture(scope="module")
def sandbox() -> SandboxInfo:
    """The isolated sandbox; this machine must provide it (a refusal fails the test, it does not skip)."""
    info = probe_sandbox()
    assert info.isolated
    return info


def run(program: str, info: SandboxInfo, timeout_s: float = 10, **limits: int) -> ExecResult:
    """One program through the sandbox."""
    return asyncio.run(run_python(program, timeout_s=timeout_s, info=info, limits=SandboxLimits(**limits)))


def host_processes_with(marker: str, wait_s: float = 3.0) -> list[int]:
    """PIDs on the host whose command line holds ``marker``, after giving the kernel ``wait_s`` to reap."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def sleeper(marker: str) -> str:
    """Python source that replaces the current process with a 60 s sleep tagged with ``marker``."""
    return f'os.execv("/usr/bin/python3", ["/usr/bin/python3", "-c", "import time; time.sleep(60)", "{marker}"])'


@pytest.mark.parametrize(
    ("completion", "status"),
    [
        ("    return a + b\n", "passed"),
        ("    return a - b\n", "failed"),
        ("    raise SystemExit(0)\n", "exited-early"),
        ("    import os\n    os._exit(0)\n", "exited-early"),
        ("    import sys\n    sys.exit()\n", "exited-early"),
        ("    return a + b\n\nimport sys\nsys.exit(0)\n", "exited-early"),
        ("    return a + b\n\nprint('servebench-check-done-0')\n", "passed"),
        ("    while True:\n        pass\n", "timeout"),
    ],
)
async def test_humaneval_passes_only_when_check_ran_to_its_end(
    sandbox: SandboxInfo, completion: str, status: str
) -> None:
    task = HumanEvalTask(api="completions", max_tokens=64, timeout_s=3, sandbox=sandbox)
    scored = await task.score(ADD, Reply(text=completion))
    assert scored.fields["status"] == status, scored.fields["detail"]
    assert scored.score == float(status == "passed")


async def test_humaneval_chat_reply_redefines_the_stub(sandbox: SandboxInfo) -> None:
    task = HumanEvalTask(api="chat", max_tokens=64, timeout_s=5, sandbox=sandbox)
    reply = Reply(text="Sure:\n```python\ndef add(a, b):\n    return a + b\n```\n")
    assert (await task.score(ADD, reply)).fields["status"] == "passed"
    assert (await task.score(ADD, Reply(text=""))).extracted is None  # an empty reply is no answer


def test_fork_bomb_is_bounded_and_dies_with_the_sandbox(sandbox: SandboxInfo) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    program = f"""import os
n = 0
try:
    while n < 10000:
        if os.fork() == 0:
            {sleeper(marker)}
        n += 1
except OSError as exc:
    print("forks", n, exc.strerror, flush=True)
"""
    result = run(program, sandbox, processes=16)
    words = result.stdout.split()
    assert words[:1] == ["forks"], result
    assert 0 < int(words[1]) < 16
    assert host_processes_with(marker) == []  # PID 1 exited: the namespace took its children along


@pytest.mark.parametrize("parent", ["exits at once", "outlives the timeout"])
def test_setsid_grandchild_does_not_outlive_the_sandbox(sandbox: SandboxInfo, parent: str) -> None:
    marker = f"setsid-{uuid.uuid4().hex}"
    tail = "time.sleep(60)" if parent == "outlives the timeout" else "pass"
    program = f"""import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        {sleeper(marker)}
    os._exit(0)
time.sleep(1)
{tail}
"""
    result = run(program, sandbox, timeout_s=3)
    assert result.status == ("timeout" if parent == "outlives the timeout" else "passed"), result
    assert host_processes_with(marker) == []


def test_writes_outside_the_private_tmp_fail(sandbox: SandboxInfo, tmp_path: Path) -> None:
    host_targets = [tmp_path / "escape", REPO / f"escape-{uuid.uuid4().hex}", Path("/tmp") / f"esc-{uuid.uuid4().hex}"]
    targets = [*map(str, host_targets[:2]), "/escape", "/usr/escape", "/dev/escape"]
    program = f"""import os, stat
for target in {targets!r}:
    try:
        open(target, "w").write("x")
        print("WROTE", target)
    except OSError as exc:
        print("refused", target, exc.strerror)
open("/tmp/mine", "w").write("ok")
print("tmp-mode", oct(stat.S_IMODE(os.stat("/tmp").st_mode)), os.getcwd())
"""
    result = run(program, sandbox)
    assert result.passed, result
    assert "WROTE" not in result.stdout
    assert "tmp-mode 0o700 /tmp" in result.stdout
    assert not any(path.exists() for path in host_targets)  # /tmp inside is not the host's /tmp either


def test_home_and_repository_cannot_be_read(sandbox: SandboxInfo) -> None:
    paths = [str(REPO / "pyproject.toml"), str(REPO), str(Path.home()), "/root", "/home", "/etc/passwd", "/proc/1"]
    program = f"""import os
for path in {paths!r}:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        print("READ", path)
    except OSError as exc:
        print("refused", path, exc.strerror)
print("root", sorted(os.listdir("/")))
"""
    result = run(program, sandbox)
    assert result.passed and "READ" not in result.stdout, result
    [listing] = [line for line in result.stdout.splitlines() if line.startswith("root ")]
    assert set(ast.literal_eval(listing[5:])) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "sbin", "tmp", "usr"}


def test_sockets_reach_nothing(sandbox: SandboxInfo) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from the host
        program = f"""import socket
for host in ("127.0.0.1", "1.1.1.1"):
    try:
        socket.create_connection((host, {port}), timeout=2)
        print("CONNECTED", host)
    except OSError as exc:
        print("refused", host, exc.strerror)
"""
        result = run(program, sandbox)
    assert result.passed and "CONNECTED" not in result.stdout, result
    assert result.stdout.count("refused") == 2


@pytest.mark.parametrize(
    ("program", "limits", "error"),
    [
        ("b = bytearray(2 << 30)\n", {}, "MemoryError"),
        ("open('/tmp/big', 'wb').write(b'x' * (32 << 20))\n", {}, "File too large"),
        ("while True:\n    pass\n", {"cpu_s": 1}, ""),
        ("import os\n[os.open('/dev/null', os.O_RDONLY) for _ in range(100)]\n", {}, "Too many open files"),
    ],
    ids=["memory", "file-size", "cpu-time", "open-files"],
)
def test_rlimits_hold(sandbox: SandboxInfo, program: str, limits: dict[str, int], error: str) -> None:
    start = time.monotonic()
    result = run(program, sandbox, timeout_s=20, **limits)
    assert result.status == "failed" and error in result.detail, result
    assert time.monotonic() - start < 10  # the CPU limit, not the 20 s timeout, ended the busy loop


def _refuse_unshare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Put an ``unshare`` first on PATH that fails as it does where user namespaces are not allowed."""
    fake = tmp_path / "bin" / "unshare"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_without_isolation_it_refuses_unless_the_weak_sandbox_is_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _refuse_unshare(monkeypatch, tmp_path)
    with pytest.raises(SandboxUnavailableError, match=r"cannot isolate.*--allow-weak-sandbox"):
        probe_sandbox()
    config = EvalConfig(url="http://127.0.0.1:9", model="m", task="humaneval", allow_code_execution=True)
    with pytest.raises(EvalSetupError, match="cannot isolate"):
        run_eval(config, tmp_path / "out")  # refused before any data is read or request sent
    assert not (tmp_path / "out").exists()
    weak = probe_sandbox(allow_weak=True)
    assert not weak.isolated and weak.describe().startswith("WEAK-NO-NAMESPACES")
    result = run("import os, stat\nprint(oct(stat.S_IMODE(os.stat('.').st_mode)))\n", weak)
    assert result.passed and result.stdout.strip() == "0o700"
