"""Trace replay, pure parts: the three published schemas, scaling and cutting, prompts from hash ids, config."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.load.arrivals import PoissonArrival, TraceArrival
from bench.load.config import LoadConfig
from bench.load.records import RequestRecord, read_records
from bench.load.runner import run_load
from bench.load.traces import TraceError, detect_format, read_trace, schedule
from bench.load.workloads import TextBuilder, TraceWorkload, materialize
from servers.launch import ServerHandle
from tests.helpers import moderate_load

TRACES = Path(__file__).parent / "data" / "traces"
AZURE, BURSTGPT = TRACES / "azure_llm_sample.csv", TRACES / "burstgpt_sample.csv"
MOONCAKE = TRACES / "mooncake_sample.jsonl"


def test_formats_are_told_apart_by_their_columns() -> None:
    assert [detect_format(p) for p in (AZURE, BURSTGPT, MOONCAKE)] == ["azure", "burstgpt", "mooncake"]


def test_azure_timestamps_are_wall_clock_with_100ns_ticks() -> None:
    rows = read_trace(AZURE)
    assert len(rows) == 10
    assert rows[0].at_s == 0
    assert rows[1].at_s == pytest.approx(0.22154, abs=1e-6)  # 46.9021300 − 46.6805900
    assert rows[-1].at_s == pytest.approx(3.0, abs=1e-6)
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].hash_ids) == (96, 6, ())


def test_burstgpt_skips_the_failed_requests_and_rebases_time() -> None:
    rows = read_trace(BURSTGPT)
    assert len(rows) == 7  # the row with Response tokens 0 is a failure of the trace
    assert [r.at_s for r in rows] == [0, 0, 1, 2, 3, 3, 5]
    assert (rows[1].input_tokens, rows[1].output_tokens) == (64, 4)


def test_mooncake_times_are_milliseconds_and_hash_ids_are_kept() -> None:
    rows = read_trace(MOONCAKE)
    assert [r.at_s for r in rows] == [0, 0, 0.35, 0.8, 1.25, 1.9]
    assert rows[2].hash_ids == (0, 1, 3)


def test_time_scale_and_max_duration() -> None:
    rows = schedule(read_trace(MOONCAKE), time_scale=2.0, max_duration_s=1.0)
    assert [r.at_s for r in rows] == [0, 0, 0.7]


def test_bad_files_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n")
    with pytest.raises(TraceError, match=r"bad\.csv:2: TIMESTAMP"):
        read_trace(bad)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="--trace-format"):
        read_trace(unknown)
    with pytest.raises(TraceError, match="missing column"):
        read_trace(unknown, "burstgpt")


def test_prompts_carry_the_trace_times_and_lengths_without_a_tokenizer() -> None:
    prompts = materialize(TraceWorkload(path=AZURE, time_scale=0.5), 10**7, TextBuilder(None, "completions"), 0)
    assert len(prompts) == 10
    assert [p.at_s for p in prompts][-1] == pytest.approx(1.5, abs=1e-6)
    assert [(p.input_tokens, p.output_tokens) for p in prompts[:2]] == [(96, 6), (40, 4)]
    assert len({p.text for p in prompts}) == 10


def test_shared_hash_ids_become_shared_prefixes() -> None:
    builder = TextBuilder(None, "completions")
    prompts = materialize(TraceWorkload(path=MOONCAKE, block_tokens=16), 10**7, builder, 0)
    first, second, third = (p.text.split() for p in prompts[:3])
    assert first[:16] == second[:16] == third[:16]  # block 0
    assert first[16:32] != second[16:32]  # blocks 1 and 2
    assert third[:32] == first[:32]  # blocks 0 and 1
    assert prompts[3].text.split()[0] != first[0]  # block 4 alone


def test_a_trace_brings_its_own_arrival_and_length() -> None:
    config = LoadConfig(url="http://127.0.0.1:1", model="m", workload=TraceWorkload(path=AZURE))
    assert isinstance(config.arrival, TraceArrival)
    assert config.num_requests is None
    with pytest.raises(ValidationError, match="own times"):
        LoadConfig(url="http://127.0.0.1:1", model="m", workload=TraceWorkload(path=AZURE),
                   arrival=PoissonArrival(rate=1))
    with pytest.raises(ValidationError, match="own times"):
        LoadConfig(url="http://127.0.0.1:1", model="m", arrival=TraceArrival())


def test_cli_flags_make_a_trace_config() -> None:
    from bench.load.cli import load_config

    config = load_config({"url": "http://127.0.0.1:1", "model": "m",
                          "workload": {"kind": "trace", "path": str(MOONCAKE), "format": "mooncake",
                                       "time_scale": 0.5, "max_duration_s": 1.0}})
    assert isinstance(config.workload, TraceWorkload)
    assert (config.workload.time_scale, config.workload.max_duration_s) == (0.5, 1.0)
    assert config.arrival.kind == "trace"


# ---- against the real Transformers server -------------------------------------------------------------------


def _replay(url: str, model: str, out: Path, trace: Path, time_scale: float) -> tuple[float, list[RequestRecord]]:
    config = LoadConfig(url=url, model=model, workload=TraceWorkload(path=trace, time_scale=time_scale),
                        request_timeout_s=120)
    run_load(config, out)
    t0 = json.loads((out / "load_config.json").read_text())["run"]["t0"]
    return t0, sorted(read_records(out / "requests.jsonl"), key=lambda r: r.index)


def test_replayed_send_times_follow_the_scaled_trace(transformers_server: ServerHandle, tmp_path: Path) -> None:
    """Each request goes at its trace time × the scale, within a few ms, with the trace's prompt length."""
    scale = 1.5  # 10 requests over 4.5 s: the fixture's server (4 batched, 4 queued) on 2 shared cores keeps up
    t0, records = _replay(transformers_server.url, transformers_server.model, tmp_path, AZURE, scale)
    trace = read_trace(AZURE)
    assert len(records) == len(trace)
    for row, record in zip(trace, records, strict=True):
        assert record.scheduled_t - t0 == pytest.approx(row.at_s * scale, abs=1e-6)
    lags_ms = [(r.sent_t - r.scheduled_t) * 1e3 for r in records]
    assert 0 <= statistics.median(lags_ms) < 3.0, lags_ms
    assert max(lags_ms) < 15.0 or not moderate_load(), lags_ms  # a loaded shared box delays a wake-up now and then
    ok = [r for r in records if r.ok]
    assert len(ok) >= len(records) // 2, [r.error for r in records]  # a full server queue answers 429
    assert all(r.prompt_tokens == r.target_input_tokens for r in ok), [(r.prompt_tokens, r.target_input_tokens)
                                                                      for r in ok]
    assert all(r.output_tokens == row.output_tokens for r, row in zip(records, trace, strict=True) if r.ok)
    series = json.loads((tmp_path / "timeseries.json").read_text())
    assert sum(w["sent"] for w in series["windows"]) == len(records)
    assert (tmp_path / "timeseries.png").exists()


def test_mooncake_blocks_reach_the_server_at_their_lengths(transformers_server: ServerHandle, tmp_path: Path) -> None:
    _, records = _replay(transformers_server.url, transformers_server.model, tmp_path, MOONCAKE, 1.0)
    assert [r.target_input_tokens for r in records] == [r.input_tokens for r in read_trace(MOONCAKE)]
    ok = [r for r in records if r.ok]
    assert len(ok) >= 4, [r.error for r in records]
    assert all(r.prompt_tokens == r.target_input_tokens for r in ok)
