"""The first program inside the sandbox's namespaces: build a private root, lock it, then exec the code.

:mod:`bench.evals.sandbox` runs this file's source with ``python -I -S -c`` under
``unshare --user --map-root-user --pid --fork --kill-child --mount --net --ipc --uts``, so it starts as
PID 1 of a new PID namespace, as root of a new user namespace (an unprivileged user outside: ``nobody``
when servebench runs as root), in its own mount namespace with an empty network. It imports only the
standard library, because it runs under the system interpreter. Its single argument is a JSON object:
``python`` (the interpreter for the code), ``binds`` (host folders to show read-only), ``limits`` (rlimit
name to value) and ``tmp_bytes`` (size of the private temp folder). The program text arrives on stdin.

Steps: a tmpfs becomes the new root; the host's system folders (``/usr``, ``/lib*``, ``/bin``...) are
bind-mounted read-only into it, ``/dev`` gets only null/zero/random/urandom, and ``/tmp`` is a fresh
0700 tmpfs (the only writable place, also the working folder). ``pivot_root`` moves into it and the old
root is detached, so nothing else of the host (the repository, home folders) can be reached; the new root
is remounted read-only. Then the rlimits are set, every capability is dropped (bounding set too) with
``no_new_privs``, and the interpreter is exec'd on the program: it becomes PID 1, so when it exits, or
the supervisor kills ``unshare``, every process it started dies with the namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
NEW_ROOT = "/tmp"  # any existing folder serves as the mount point of the new root (this namespace only)
DEVICES = ("null", "zero", "random", "urandom")
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    args = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    _check(LIBC.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]), f"mount {target}")


def bind_readonly(host: str, target: str) -> None:
    """Show ``host`` at ``target``, read-only, no setuid, no devices."""
    mount(host, target, None, MS_BIND | MS_REC)
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def populate(root: str, binds: list[str]) -> None:
    """System folders (as symlinks where the host has them as symlinks), devices and the private /tmp."""
    for host in binds:
        inside = Path(root + host)
        if Path(host).is_symlink():
            inside.symlink_to(Path(host).readlink())
        elif Path(host).is_dir():
            inside.mkdir(parents=True, exist_ok=True)
            bind_readonly(host, str(inside))
    Path(root, "dev").mkdir()
    for name in DEVICES:
        Path(root, "dev", name).touch()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    Path(root, "tmp").mkdir()


def enter(root: str, tmp_bytes: int) -> None:
    """pivot_root into ``root``, detach the host's tree, lock the root read-only, mount the private /tmp."""
    Path(root, ".old").mkdir()
    number = SYS_PIVOT_ROOT[os.uname().machine]  # glibc has no pivot_root wrapper
    _check(LIBC.syscall(number, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(LIBC.umount2(b"/.old", MNT_DETACH), "umount old root")
    Path("/.old").rmdir()
    mount("none", "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={tmp_bytes},nr_inodes=4096")


def drop_privileges(limits: dict[str, int]) -> None:
    """rlimits, then no capabilities (effective, permitted, inheritable and bounding) and no_new_privs."""
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    cap = 0
    while LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two all-zero {effective, permitted, inheritable} sets
    _check(LIBC.capset(header, data), "capset")
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(config: dict[str, Any]) -> None:
    """Build the private root, move in, lock down, exec the program."""
    program = sys.stdin.buffer.read()
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    populate(NEW_ROOT, config["binds"])
    enter(NEW_ROOT, int(config["tmp_bytes"]))
    Path("/tmp/program.py").write_bytes(program)
    os.chdir("/tmp")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    drop_privileges({name: int(value) for name, value in config["limits"].items()})
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    os.execve(config["python"], [config["python"], "-I", "-B", "/tmp/program.py"], env)


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except OSError as exc:
        print(f"sandbox setup failed: {exc}", file=sys.stderr)
        sys.exit(125)
