"""bench load against the real servebench server (Transformers engine, bundled model) on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.load.config import LoadConfig
from bench.load.records import read_records
from bench.load.runner import run_load_async


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_exact_lengths_against_real_server(transformers_server: Any, api: str, tmp_path: Path) -> None:
    cfg = LoadConfig(
        url=transformers_server.url,
        model=transformers_server.model,
        api=api,  # type: ignore[arg-type]
        workload={"kind": "random", "input_tokens": 48, "output_tokens": 8},  # type: ignore[arg-type]
        arrival={"kind": "concurrency", "n": 2},  # type: ignore[arg-type]
        num_requests=4,
        tokenizer="smollm2-135m-instruct-hf",
    )
    s = await run_load_async(cfg, tmp_path)
    assert s.num_ok == 4, s.errors
    records = read_records(tmp_path / "requests.jsonl")
    assert {r.token_count_source for r in records} == {"usage"}
    assert {r.output_tokens for r in records} == {8}  # ignore_eos + min_tokens force the length
    assert {r.prompt_tokens for r in records} == {48}  # chat template tokens included in the target
    check = s.prompt_tokens_check  # the server counts our prompts as our tokenizer did
    assert check is not None and check.checked == 4 and not check.mismatch and check.ours == check.server == 4 * 48
    assert (tmp_path / "server_metrics.jsonl").stat().st_size > 0
    assert "requests_running_peak" in s.server
