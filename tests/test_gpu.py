"""backends.gpu: whether a GPU is visible (the NVIDIA driver's files, CUDA_VISIBLE_DEVICES), what nvidia-smi says;
vLLM's choice of interpreter on CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import EngineOptions
from backends.errors import UnsupportedOptionError
from backends.gpu import (
    NVIDIA_DRIVER_FILES,
    GpuInfo,
    SmiReport,
    cuda_missing_reason,
    nvidia_driver_file,
    parse_cuda_version,
    parse_gpu_query,
    query_nvidia_smi,
)
from backends.venvs import MARKER
from backends.vllm import config as vllm_config
from backends.vllm import venv as vllm_venv


def test_driver_file_is_the_first_that_exists(tmp_path: Path) -> None:
    ctl, dev, proc = tmp_path / "nvidiactl", tmp_path / "nvidia0", tmp_path / "version"
    assert nvidia_driver_file([ctl, dev, proc]) is None
    proc.touch()
    assert nvidia_driver_file([ctl, dev, proc]) == proc
    dev.touch()
    assert nvidia_driver_file([ctl, dev, proc]) == dev
    assert {str(p) for p in NVIDIA_DRIVER_FILES} == {"/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"}


def test_cuda_missing_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = tmp_path / "nvidiactl"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_missing_reason([node]) == "needs CUDA: no NVIDIA GPU or driver on this machine"
    node.touch()
    assert cuda_missing_reason([node]) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert cuda_missing_reason([node]) is None
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert cuda_missing_reason([node]) == "needs CUDA: CUDA_VISIBLE_DEVICES hides every GPU"


def test_vllm_picks_cpu_when_cuda_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_config, "module_available", lambda module: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert vllm_config.resolve_platform(EngineOptions()) == "cpu"


# What nvidia-smi prints on the H100 the GPU notes measured (benchmarks/gpu/README.md), in both forms asked.
H100_QUERY = "NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n"
H100_BANNER = ("| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n")


def test_parse_gpu_query_and_banner() -> None:
    gpus = parse_gpu_query(H100_QUERY + H100_QUERY.replace("81559", "81559 MiB") + "[N/A], [N/A], 1, 2\n")
    assert gpus == (GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580.159.04", 81559),) * 2
    assert parse_cuda_version(H100_BANNER) == "13.0"
    assert parse_cuda_version("no banner") is None
    report = SmiReport(gpus, "13.0")
    assert report.describe() == ("2x NVIDIA H100 80GB HBM3 (compute 9.0, 81559 MiB), driver 580.159.04, CUDA 13.0")
    assert SmiReport((), None).describe() == "no GPU listed by nvidia-smi"


def fake_nvidia_smi(bin_dir: Path, query: str = H100_QUERY, banner: str = H100_BANNER) -> Path:
    """An ``nvidia-smi`` script: the query rows for ``--query-gpu=...``, the banner without arguments."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) printf '%s' '{query}' ;;\n"
                      f"  *) printf '%s' '{banner}' ;;\nesac\n")
    script.chmod(0o755)
    return script


def test_query_nvidia_smi_runs_the_one_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert query_nvidia_smi() is None
    fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    report = query_nvidia_smi()
    assert report is not None and report.cuda_version == "13.0"
    assert [gpu.compute_cap for gpu in report.gpus] == ["9.0"]


def test_vllm_on_cuda_uses_the_vllm_cuda_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEBENCH_VENVS", str(tmp_path))
    monkeypatch.setattr(vllm_config, "module_available", lambda module: False)
    monkeypatch.setattr(vllm_config, "cuda_present", lambda: True)
    assert vllm_config.cuda_python() is None
    assert vllm_config.resolve_platform(EngineOptions()) == "cpu"
    cuda = vllm_venv.VLLM_CUDA
    cuda.python.parent.mkdir(parents=True)
    cuda.python.touch()
    (cuda.root / "lib/python3.12/site-packages/gguf").mkdir(parents=True)
    (cuda.root / "lib/python3.12/site-packages/gguf/__init__.py").touch()
    (cuda.root / MARKER).write_text(cuda.marker_text())
    assert vllm_config.cuda_python() == str(cuda.python)
    assert vllm_config.resolve_platform(EngineOptions()) == "cuda"
    with pytest.raises(UnsupportedOptionError, match="no GGUF loader"):  # the venv's vLLM has no GGUF loader
        vllm_config.validate(EngineOptions(device="cuda"), "gguf")
    loader = cuda.root / "lib/python3.12/site-packages/vllm" / vllm_config.GGUF_LOADER
    loader.parent.mkdir(parents=True)
    loader.touch()
    vllm_config.validate(EngineOptions(device="cuda"), "gguf")  # gguf found in the venv, not in this interpreter
