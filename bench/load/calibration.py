"""Calibration server: an OpenAI-style SSE endpoint with a scripted TTFT and inter-token delay.

It is the ground truth for the load generator only (never a stand-in for a backend under test).
Token ``j`` of a response is written at ``receipt + ttft + j * itl`` on absolute deadlines, so sleep
overshoot never accumulates; the first chunk carries one token and later chunks carry
``tokens_per_chunk`` tokens (written when their last token is due). When the request asks for
logprobs, each chunk carries one logprobs entry per token. It sends ``usage`` when the request asks for it
(``stream_options.include_usage``), unless started with ``--no-usage``. ``GET /calib/log`` returns, per
``X-Request-Id``, the receipt time and the time each chunk was written (``time.perf_counter``, the
same CLOCK_MONOTONIC the client records on), so a benchmark can measure the client's own timing error.

``--fault KIND --fault-every N`` makes every N-th completion request (counted per process) misbehave, to
test how the client survives a hostile peer: ``hang`` (never answer), ``status-500``, ``drop`` (close the
connection without a response, :data:`DROP_AFTER_S` after the request) or ``malformed`` (a 200 stream with a
well-formed JSON chunk of the wrong shape, cycling through :data:`MALFORMED_CHUNKS`) or ``close-after`` (a
normal answer, then the connection closed without ``Connection: close``, as llama-server does after every
streamed answer).

Run it in its own process: ``python -m bench.load.calibration --port 8123 --ttft-ms 20 --itl-ms 5``.
It is a small hand-written HTTP/1.1 server (keep-alive, chunked encoding) so that it is not the
bottleneck when measuring client capacity; ``--procs`` starts several processes on one port
(SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backends.net import free_port

Fault = Literal["hang", "status-500", "drop", "malformed", "close-after"]
FAULTS: tuple[Fault, ...] = ("hang", "status-500", "drop", "malformed", "close-after")
# Well-formed JSON of the wrong shape, sent by the ``malformed`` fault in turn.
MALFORMED_CHUNKS: tuple[bytes, ...] = (
    b'{"choices":"x"}',
    b'{"choices":[1]}',
    b'{"choices":[{"index":0,"delta":{"content":5},"finish_reason":null}]}',
)
# A hanging request is let go after this long even if the client never gives up.
HANG_LIMIT_S = 300.0
# A dropped request's connection is closed this long after the request arrived (as if the server died in prefill).
DROP_AFTER_S = 0.2


@dataclass(frozen=True)
class Script:
    """The scripted timing."""

    ttft_s: float = 0.02
    itl_s: float = 0.005
    tokens_per_chunk: int = 1
    prompt_tokens: int | None = None  # default: whitespace words of the prompt
    # Event-loop timers fire up to a millisecond or two late on a busy machine: sleep until this long
    # before a deadline, then yield to the loop until it is due (0 disables; costs CPU).
    spin_s: float = 0.002
    # Send ``usage`` when the request asks for it (``stream_options.include_usage``); False: never, as some
    # servers do, so that clients must count the output tokens themselves.
    usage: bool = True
    # Every ``fault_every``-th completion request misbehaves this way (None: none does).
    fault: Fault | None = None
    fault_every: int = 1


@dataclass
class _State:
    script: Script
    log: dict[str, list[float]] = field(default_factory=dict)
    log_fd: int = -1
    running: int = 0
    tokens_total: int = 0
    requests_total: int = 0
    posts: int = 0  # completion requests received, faulted or not
    faulted: int = 0

    def next_fault(self) -> Fault | None:
        """Count one completion request; the fault it gets, if it is one of every ``fault_every``."""
        self.posts += 1
        if self.script.fault is None or self.posts % self.script.fault_every:
            return None
        self.faulted += 1
        return self.script.fault


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: dict[str, Any]) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def _choice(chat: bool, n: int, logprobs: bool, finish: str | None) -> dict[str, Any]:
    text = " tok" * n
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text}
        if logprobs:
            choice["logprobs"] = {"content": [{"token": " tok", "logprob": -0.1, "top_logprobs": []}] * n}
    else:
        choice["text"] = text
        if logprobs:
            choice["logprobs"] = {"tokens": [" tok"] * n, "token_logprobs": [-0.1] * n}
    return choice


def _chunk_sizes(n: int, k: int) -> Iterator[int]:
    if n <= 0:
        return
    yield 1
    left = n - 1
    while left > 0:
        step = min(k, left)
        yield step
        left -= step


async def _stream(
    writer: asyncio.StreamWriter, req: dict[str, Any], chat: bool, rid: str, st: _State
) -> None:
    recv = time.perf_counter()
    script = st.script
    n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
    logprobs = bool(req.get("logprobs") is not None and req.get("logprobs") is not False)
    usage_on = script.usage and bool((req.get("stream_options") or {}).get("include_usage"))
    prompt = json.dumps(req.get("messages") or req.get("prompt") or "")
    n_prompt = script.prompt_tokens if script.prompt_tokens is not None else len(prompt.split())
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": rid, "object": obj, "created": int(time.time()), "model": req.get("model", "calibration")}
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    times = st.log.setdefault(rid, [recv])
    st.running += 1
    st.requests_total += 1
    sent = 0
    try:
        if chat:
            writer.write(
                _event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            )
        for size in _chunk_sizes(n, script.tokens_per_chunk):
            sent += size
            await _wait_until(recv + script.ttft_s + (sent - 1) * script.itl_s, script.spin_s)
            finish = "length" if sent == n else None
            event = _event({**base, "choices": [_choice(chat, size, logprobs, finish)]})
            times.append(time.perf_counter())  # before the write: the client may read it before write() returns
            writer.write(event)
            st.tokens_total += size
            await writer.drain()
        if usage_on:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
            writer.write(_event({**base, "choices": [], "usage": usage}))
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
    finally:
        st.running -= 1
        if st.log_fd >= 0:
            os.write(st.log_fd, (json.dumps({"id": rid, "t": times}) + "\n").encode())
            del st.log[rid]


async def _wait_until(due: float, spin_s: float) -> None:
    delay = due - time.perf_counter() - spin_s
    if delay > 0:
        await asyncio.sleep(delay)
    while time.perf_counter() < due:  # noqa: ASYNC110  (a yield-spin, not a wait for an event)
        await asyncio.sleep(0)


def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(status, "OK")
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (status, reason.encode(), ctype.encode(), len(body), body)
    )


def _metrics_text(st: _State) -> bytes:
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="calibration"}} {st.running}',
        "# TYPE vllm:num_requests_waiting gauge",
        'vllm:num_requests_waiting{model_name="calibration"} 0',
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{model_name="calibration"}} {st.tokens_total}',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f'vllm:kv_cache_usage_perc{{model_name="calibration"}} {min(st.running / 256, 1.0)}',
    ]
    return ("\n".join(lines) + "\n").encode()


async def _handle_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, st: _State) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
        fault = st.next_fault()
        if fault is not None and fault != "close-after":
            return await _misbehave(fault, reader, writer, st.faulted)
        req = json.loads(body or b"{}")
        rid = headers.get("x-request-id") or f"r{time.perf_counter_ns()}"
        await _stream(writer, req, path.endswith("chat/completions"), rid, st)
        if fault == "close-after":
            await writer.drain()
            return False  # closed unannounced: the client took the connection to be reusable
    elif path == "/calib/log":
        _reply(writer, 200, json.dumps(st.log).encode())
        if method == "DELETE":
            st.log.clear()
    elif path == "/metrics":
        _reply(writer, 200, _metrics_text(st), "text/plain; version=0.0.4")
    elif path in ("/health", "/v1/models"):
        _reply(writer, 200, b'{"object":"list","data":[{"id":"calibration","object":"model"}]}')
    else:
        _reply(writer, 404, b'{"error":{"message":"not found"}}')
    await writer.drain()
    return headers.get("connection", "").lower() != "close"


async def _misbehave(fault: Fault, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> bool:
    """Answer one completion request the hostile way ``fault`` says; whether the connection stays open."""
    if fault == "hang":
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), HANG_LIMIT_S)  # until the client gives up and closes
        return False
    if fault == "drop":
        await asyncio.sleep(DROP_AFTER_S)
        return False
    if fault == "status-500":
        _reply(writer, 500, b'{"error":{"message":"scripted failure","type":"server_error","code":500}}')
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        good = {"choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
        writer.write(_event(good))
        bad = MALFORMED_CHUNKS[(nth - 1) % len(MALFORMED_CHUNKS)]
        writer.write(_chunk(b"data: " + bad + b"\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()
    return True


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, st: _State) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while await _handle_one(reader, writer, st):
            pass
    writer.close()


async def serve(host: str, port: int, script: Script, log_dir: str | None = None) -> None:
    """Serve forever on ``host:port`` (SO_REUSEPORT, so several processes may share the port).

    With ``log_dir``, each finished request's write times are appended to ``calib-<pid>.jsonl`` there
    instead of being kept for ``/calib/log``.
    """
    st = _State(script)
    if log_dir:
        path = Path(log_dir) / f"calib-{os.getpid()}.jsonl"
        st.log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    server = await asyncio.start_server(lambda r, w: _serve_conn(r, w, st), sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def _run(host: str, port: int, script: Script, log_dir: str | None) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host, port, script, log_dir))
    else:
        uvloop.run(serve(host, port, script, log_dir))


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.load.calibration``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=None)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--spin-ms", type=float, default=2.0, help="yield-spin before each deadline (0: off)")
    ap.add_argument("--no-usage", action="store_true", help="never send usage, even when the request asks for it")
    ap.add_argument("--fault", choices=FAULTS, default=None, help="misbehave this way (see the module docstring)")
    ap.add_argument("--fault-every", type=int, default=1, help="every N-th completion request gets --fault")
    args = ap.parse_args(argv)
    script = Script(
        args.ttft_ms / 1e3, args.itl_ms / 1e3, args.tokens_per_chunk, args.prompt_tokens, args.spin_ms / 1e3,
        usage=not args.no_usage, fault=args.fault, fault_every=max(args.fault_every, 1),
    )
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            _run(args.host, args.port, script, args.log_dir)
            os._exit(0)
        children.append(pid)
    with contextlib.suppress(KeyboardInterrupt):
        _run(args.host, args.port, script, args.log_dir)


def read_calibration_log(log_dir: str | Path) -> dict[str, list[float]]:
    """``{request_id: [receipt, write time of each chunk...]}`` from every process's log file."""
    out: dict[str, list[float]] = {}
    for path in Path(log_dir).glob("calib-*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                out[row["id"]] = row["t"]
    return out


@contextlib.contextmanager
def calibration_server(
    ttft_ms: float = 20.0,
    itl_ms: float = 5.0,
    tokens_per_chunk: int = 1,
    procs: int = 1,
    port: int | None = None,
    log_dir: str | None = None,
    spin_ms: float = 2.0,
    usage: bool = True,
    fault: Fault | None = None,
    fault_every: int = 1,
) -> Iterator[str]:
    """Run the calibration server in a subprocess; yields its root URL, stops it on exit.

    ``usage=False``: the server never sends ``usage`` (``--no-usage``). ``fault``: every ``fault_every``-th
    completion request misbehaves that way (``--fault``).
    """
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "bench.load.calibration",
        "--port",
        str(port),
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--tokens-per-chunk",
        str(tokens_per_chunk),
        "--procs",
        str(procs),
        "--spin-ms",
        str(spin_ms),
    ]
    if log_dir:
        cmd += ["--log-dir", log_dir]
    if not usage:
        cmd.append("--no-usage")
    if fault is not None:
        cmd += ["--fault", fault, "--fault-every", str(fault_every)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"calibration server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"calibration server at {url} did not become healthy in {timeout_s}s")


if __name__ == "__main__":
    main()
