"""Errors raised while configuring or starting an engine."""

from __future__ import annotations

import re
import signal
from types import MappingProxyType


class BackendError(Exception):
    """Base class for engine setup errors."""


class UnknownBackendError(BackendError):
    """The backend name is not in the registry."""


class MissingExtraError(BackendError):
    """An engine's optional dependency is not installed."""

    def __init__(self, backend: str, extra: str, missing: str) -> None:
        super().__init__(
            f"backend {backend!r} needs the Python package {missing!r}, which is not installed. "
            f"Install it with: pip install 'servebench[{extra}]'"
        )
        self.backend = backend
        self.extra = extra
        self.missing = missing


class UnsupportedOptionError(BackendError):
    """An engine was asked for an option or format it cannot honour."""

    def __init__(self, backend: str, option: str, value: object, supported: object = None) -> None:
        hint = f"; supported: {supported}" if supported is not None else ""
        super().__init__(f"backend {backend!r} does not support {option}={value!r}{hint}")
        self.backend = backend
        self.option = option
        self.value = value


class EngineDeadError(BackendError):
    """The engine's worker stopped; requests can no longer be served."""


class InvalidRequestError(ValueError):
    """A request that no engine could run (an empty prompt, a token id outside the vocabulary).

    It is the request's own fault: the server answers 400, and no other request is affected.
    """


# What each deadly signal usually means for a server process, and what the user can do about it.
_SIGNAL_CAUSES = MappingProxyType({
    "SIGILL": "illegal instruction: the binary uses CPU instructions this machine cannot run",
    "SIGKILL": "usually the kernel's out-of-memory killer (see `dmesg`), or a `kill -9`",
    "SIGSEGV": "segmentation fault: a crash inside the engine",
    "SIGBUS": "bus error: often a model file truncated or changed while it was memory-mapped",
    "SIGABRT": "aborted: an assertion or fatal error inside the engine",
    "SIGFPE": "arithmetic fault inside the engine",
})


# A Python exception line as a server logs it, after any process tag or logger prefix:
# "(EngineCore pid=1) ERROR 12-06 19:52:59 [core.py:1231] RuntimeError: expected scalar type Half ...".
_EXCEPTION_LINE = re.compile(r"^(?:\(\w+ pid=\d+\)\s+)?(?:[A-Z]+ [\d-]+ [\d:.]+ \[[^\]]*\]\s+)?"
                             r"((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): .+)$")


def first_exception(log: str) -> str | None:
    """The first exception line of a server's log (``RuntimeError: ...``), or None.

    A server that dies while starting usually logs the root cause first and its wrappers after it (vLLM's API
    server ends with "Engine core initialization failed. See root cause above."), so the first one is the one a
    user needs; the log's last lines are often only the wrapper's traceback.
    """
    for line in log.splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return match.group(1).strip()
    return None


def describe_exit(what: str, returncode: int, hint: str = "") -> str:
    """One sentence saying how a process ended and why that usually happens, e.g. for a dead server.

    ``returncode`` is :attr:`subprocess.Popen.returncode` (negative: killed by that signal). ``hint`` is
    what to do, appended for signals that mean the binary cannot run here (SIGILL).
    """
    if returncode >= 0:
        return f"{what} exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"{what} exited with code {returncode} (killed by signal {-returncode})"
    cause = _SIGNAL_CAUSES.get(name, "")
    text = f"{what} exited with code {returncode}: killed by {name}" + (f" ({cause})" if cause else "")
    if hint and name == "SIGILL":
        text += f". {hint}"
    return text
