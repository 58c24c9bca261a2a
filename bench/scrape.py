"""Sample the server's ``/metrics`` and NVML beside the records, on the records' clock (I/O only).

Rows go to ``server_metrics.jsonl`` (:class:`~bench.metrics.server.ScrapeRow`: ``{"t": ..., "values":
{name: value}}``, label sets summed, histogram buckets dropped) and ``gpu.jsonl``
(:class:`~bench.metrics.server.GpuRow`: one per GPU per sample); :func:`read_server_rows` and
:func:`read_gpu_rows` validate them on the way back. The pure functions that turn rows into figures (and the
metric names understood) live in :mod:`bench.metrics.server`.

NVML (``pynvml``, from ``nvidia-ml-py``: ``pip install -e '.[gpu]'``) gives memory, power and the
energy counter. Without a GPU the GPU part is skipped quietly; with one visible (the driver's
``/dev/nvidiactl``) but NVML failing to load, it is skipped with a warning, since ``gpu.jsonl`` then
stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from backends import archived
from backends.gpu import NVIDIA_DRIVER_FILES, nvidia_driver_file
from bench.metrics.server import GpuRow, ScrapeRow, parse_prometheus

log = logging.getLogger(__name__)
R = TypeVar("R", ScrapeRow, GpuRow)


class ScrapeRowError(ValueError):
    """A complete line of a scrape file that is not a row of its kind (the message names the line and field)."""


def read_server_rows(path: Path) -> list[ScrapeRow]:
    """The validated rows of a ``server_metrics.jsonl`` (none when it is missing)."""
    return _read_rows(path, ScrapeRow)


def read_gpu_rows(path: Path) -> list[GpuRow]:
    """The validated rows of a ``gpu.jsonl`` (none when it is missing)."""
    return _read_rows(path, GpuRow)


def _read_rows(path: Path, model: type[R]) -> list[R]:
    """Rows of a scrape JSONL file. A truncated last line (the run was killed mid-write) is skipped; a complete
    line of the wrong shape raises :class:`ScrapeRowError`."""
    if not archived.exists(path):
        return []
    rows = []
    for number, line in enumerate(archived.read_bytes(path).splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            continue
        try:
            rows.append(model.model_validate_json(line))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(row)'}: {e['msg']}" for e in exc.errors())
            raise ScrapeRowError(f"{path}:{number} is not a {model.__name__}: {problems}") from None
    return rows


def _line(row: ScrapeRow | GpuRow) -> bytes:
    return (row.model_dump_json(exclude_none=True) + "\n").encode()


# Files the NVIDIA driver creates: when one exists, a GPU is there for NVML to read.
NVIDIA_DEVICE_NODES = NVIDIA_DRIVER_FILES


def cuda_device_visible(nodes: Sequence[Path] = NVIDIA_DEVICE_NODES) -> Path | None:
    """The first NVIDIA driver file that exists (the evidence a log line can name), or ``None`` (no GPU here).

    ``CUDA_VISIBLE_DEVICES`` does not matter here: NVML sees every GPU whatever CUDA is told.
    """
    return nvidia_driver_file(nodes)


class _Nvml:
    """Thin NVML reader; ``available`` is False without pynvml or a GPU.

    ``device_nodes`` are the files whose presence means a GPU is visible, so that NVML failing to
    load is worth a warning rather than a debug line.
    """

    def __init__(self, device_nodes: Sequence[Path] = NVIDIA_DEVICE_NODES) -> None:
        self.handles: list[Any] = []
        self.names: list[str] = []
        try:
            self._open()
        except Exception as exc:  # no pynvml, no driver, no GPU: skip the GPU part
            self.handles, self.names = [], []
            _report_no_nvml(exc, cuda_device_visible(device_nodes))

    def _open(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nv = pynvml
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            self.handles.append(h)
            name = pynvml.nvmlDeviceGetName(h)
            self.names.append(name.decode() if isinstance(name, bytes) else str(name))

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def sample(self, t: float, mark: str | None = None) -> list[GpuRow]:
        rows = []
        for i, h in enumerate(self.handles):
            energy: float | None
            try:
                energy = self._nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
            except Exception:
                energy = None
            rows.append(GpuRow(t=t, gpu=i, name=self.names[i], mem_used_bytes=self._nv.nvmlDeviceGetMemoryInfo(h).used,
                               power_w=self._nv.nvmlDeviceGetPowerUsage(h) / 1e3, energy_j=energy, mark=mark))
        return rows


def _report_no_nvml(exc: Exception, device: Path | None) -> None:
    if device is None:
        log.debug("NVML unavailable (no GPU visible): %s", exc)
        return
    log.warning(
        "a GPU is visible (%s) but NVML did not load (%s: %s), so gpu.jsonl stays empty; "
        "install nvidia-ml-py (pip install -e '.[gpu]')",
        device, type(exc).__name__, exc,
    )  # fmt: skip


class Scraper:
    """Polls ``metrics_url`` and NVML every ``interval_s`` until stopped, writing JSONL rows.

    A run starts the files afresh (like ``requests.jsonl``), so a folder run twice holds one run's rows.
    :meth:`mark` takes an extra sample at once, labelled, e.g. at the warm-up boundary.
    """

    def __init__(self, metrics_url: str, out_dir: Path, interval_s: float, now: Callable[[], float]) -> None:
        self.metrics_url = metrics_url
        self.server_path = out_dir / "server_metrics.jsonl"
        self.gpu_path = out_dir / "gpu.jsonl"
        self.interval_s = interval_s
        self.now = now
        self.gpu_names: list[str] = []
        self.metrics_ok = True
        self._live: tuple[Any, _Nvml, int, int] | None = None  # session, NVML, fds while running
        import prometheus_client.parser  # noqa: F401  (imported now, not on the first sample)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set, then take one last sample."""
        import aiohttp

        nvml = _Nvml()
        self.gpu_names = nvml.names
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s * 4, 2.0))
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as session:
            with _open_fresh(self.server_path) as sfd, _open_fresh(self.gpu_path) as gfd:
                self._live = (session, nvml, sfd, gfd)
                try:
                    while True:
                        await self._sample(session, nvml, sfd, gfd)
                        if stop.is_set():
                            return
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
                finally:
                    self._live = None

    async def mark(self, label: str) -> None:
        """Take a sample now, its rows tagged ``"mark": label``; returns once they are written (no-op when
        the scraper is not running)."""
        if self._live is not None:
            await self._sample(*self._live, mark=label)

    async def _sample(self, session: Any, nvml: _Nvml, sfd: int, gfd: int, mark: str | None = None) -> None:
        if self.metrics_ok:
            try:
                async with session.get(self.metrics_url) as resp:
                    if resp.status == 404:
                        self.metrics_ok = False  # e.g. llama_cpp.server: no /metrics
                        return
                    text = await resp.text()
                os.write(sfd, _line(ScrapeRow(t=self.now(), values=parse_prometheus(text), mark=mark)))
            except Exception as exc:
                log.debug("scrape %s failed: %s", self.metrics_url, exc)
        if nvml.available:
            for row in nvml.sample(self.now(), mark):
                os.write(gfd, _line(row))


@contextlib.contextmanager
def _open_fresh(path: Path) -> Any:
    """An append-only descriptor on an emptied file (one ``os.write`` per row)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)
