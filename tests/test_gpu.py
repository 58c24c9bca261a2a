"""backends.gpu: whether a GPU is visible, from the NVIDIA driver's files and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import EngineOptions
from backends.gpu import NVIDIA_DRIVER_FILES, cuda_missing_reason, nvidia_driver_file
from backends.vllm import config as vllm_config


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
