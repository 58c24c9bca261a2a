"""An API key given to ``bench load``/``bench sweep`` is sent, and written to no file of the run."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import build_app
from bench.load.config import LoadConfig
from servers.launch import ServerHandle
from tests.helpers import scripted_server

KEY = "sk-test-123"  # the key the secured_server fixture requires


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    yield from scripted_server()


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _invoke(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(build_app(), list(args), env=env)
    # 3: bench sweep finished but a step's client fell behind (a busy CI machine); the key is what is tested here
    assert result.exit_code in ((0, 3) if args[0] == "sweep" else (0,)), result.output
    assert KEY not in result.output
    return result.output


def test_the_config_never_dumps_the_key() -> None:
    cfg = LoadConfig(url="http://127.0.0.1:1", model="m", api_key=KEY)  # type: ignore[arg-type]
    assert cfg.key() == KEY and pickle.loads(pickle.dumps(cfg)).key() == KEY  # worker processes still get it
    for text in (cfg.model_dump_json(), str(cfg.model_dump()), str(cfg.model_dump(mode="json")), repr(cfg), str(cfg)):
        assert KEY not in text
    assert LoadConfig(url="http://127.0.0.1:1", model="m", api_key="").key() is None  # type: ignore[arg-type]


def test_a_printed_server_spec_holds_no_key() -> None:
    from backends.base import EngineOptions, ServerSpec

    spec = ServerSpec(backend="llamacpp", model_name="m", model_path=Path("m.gguf"), options=EngineOptions(),
                      api_key=KEY)
    assert spec.api_key == KEY and KEY not in repr(spec) and KEY not in str(spec)


def test_a_planted_key_is_sent_and_written_nowhere(secured_server: ServerHandle, calib_url: str,
                                                  tmp_path: Path) -> None:
    """Against the real server behind --api-key (it answers 401 without the key), from the flag and from
    OPENAI_API_KEY; then a small sweep; then every file of every run is searched for the key."""
    common = ["--url", secured_server.url, "--model", secured_server.model, "--num-requests", "2",
              "--input-tokens", "8", "--output-tokens", "4", "--no-scrape"]
    _invoke("load", *common, "--api-key", KEY, "--out", str(tmp_path / "flag"))
    _invoke("load", *common, "--out", str(tmp_path / "env"), env={"OPENAI_API_KEY": KEY})
    _invoke("sweep", "--url", calib_url, "--model", "calibration", "--api-key", KEY, "--mode", "concurrency",
            "--start", "1", "--max", "2", "--refine", "0", "--num-requests", "3", "--slo-ttft-ms", "5000",
            "--input-tokens", "8", "--output-tokens", "4", "--out", str(tmp_path / "sweep"))
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert {"load_config.json", "requests.jsonl", "summary.json", "sweep.json"} <= set(written)
    assert _files_holding(tmp_path, KEY) == []


def test_a_started_server_gets_its_key_in_its_environment_not_its_command_line(secured_server: ServerHandle) -> None:
    """``ps`` shows every user a command line; /proc/<pid>/environ only to the process's owner."""
    proc = Path(f"/proc/{secured_server.process.pid}")
    assert KEY.encode() not in (proc / "cmdline").read_bytes()
    assert f"SERVEBENCH_API_KEY={KEY}".encode() in (proc / "environ").read_bytes().split(b"\0")
