"""Server /metrics parsing and the pure summaries built from scraped rows."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

from bench.load.calibration import calibration_server
from bench.metrics.server import (
    GpuRow,
    ScrapeRow,
    mbu,
    parse_prometheus,
    peak_bandwidth_gbs,
    summarize_gpu,
    summarize_server,
)
from bench.scrape import Scraper, ScrapeRowError, _Nvml, cuda_device_visible, read_gpu_rows, read_server_rows

VLLM = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} %(q)s
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} %(h)s
# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} %(d)s
# TYPE vllm:spec_decode_num_draft_tokens counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} %(dt)s
# TYPE vllm:spec_decode_num_accepted_tokens counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} %(a)s
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{model_name="m"} 5.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.7
"""

LLAMACPP = """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.5
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 1234
"""


def test_parse_vllm_drops_buckets_and_sums_labels() -> None:
    v = parse_prometheus(VLLM % {"q": 100, "h": 40, "d": 10, "dt": 30, "a": 20})
    assert v["vllm:kv_cache_usage_perc"] == 0.25
    assert v["vllm:prefix_cache_hits_total"] == 40
    assert v["vllm:time_to_first_token_seconds_count"] == 5
    assert not any("bucket" in k for k in v)


def test_server_summary_uses_counter_deltas() -> None:
    rows = [
        ScrapeRow(t=0.0, values=parse_prometheus(VLLM % {"q": 100, "h": 40, "d": 10, "dt": 30, "a": 20})),
        ScrapeRow(t=1.0, values=parse_prometheus(VLLM % {"q": 300, "h": 190, "d": 20, "dt": 60, "a": 41})),
    ]
    s = summarize_server(rows)
    assert s["kv_cache_usage_peak"] == 0.25
    assert s["prefix_cache_hit_rate"] == pytest.approx(150 / 200)
    assert s["spec_acceptance_rate"] == pytest.approx(21 / 30)
    assert s["spec_acceptance_length"] == pytest.approx(1 + 21 / 10)


def test_llamacpp_names() -> None:
    s = summarize_server([ScrapeRow(t=0.0, values=parse_prometheus(LLAMACPP))])
    assert s["kv_cache_usage_peak"] == 0.5 and s["requests_running_peak"] == 2
    assert s["prefix_cache_hit_rate"] is None


def test_gpu_summary_energy_and_memory() -> None:
    rows = [
        GpuRow(t=0.0, gpu=0, name="NVIDIA H100 80GB HBM3", mem_used_bytes=2**30, power_w=300, energy_j=10.0),
        GpuRow(t=1.0, gpu=0, name="NVIDIA H100 80GB HBM3", mem_used_bytes=3 * 2**30, power_w=500, energy_j=410.0),
    ]
    g = summarize_gpu(rows, output_tokens=800)
    assert g["gpu_mem_peak_gib"] == pytest.approx(3.0)
    assert g["joules_per_output_token"] == pytest.approx(0.5)
    no_counter = [r.model_copy(update={"energy_j": None}) for r in rows]
    assert summarize_gpu(no_counter, 800)["gpu_energy_j"] == pytest.approx(400.0)  # power integral


def test_mbu_and_bandwidth_table() -> None:
    assert peak_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak_bandwidth_gbs("NVIDIA H100 PCIe") == 2000.0
    assert peak_bandwidth_gbs("mystery") is None
    assert peak_bandwidth_gbs("NVIDIA H200") == 4800.0 and peak_bandwidth_gbs("NVIDIA GH200 480GB") == 4000.0
    # 7 GB of weights, one decode step every 5 ms: 1.4 TB/s of 3.35 TB/s
    assert mbu(7_000_000_000, 0.005, 3350.0) == pytest.approx(1.4e12 / 3.35e12)
    assert mbu(None, 0.005, 3350.0) is None


async def test_scraper_samples_on_the_record_clock(tmp_path: Path) -> None:
    with calibration_server() as url:
        scraper = Scraper(url + "/metrics", tmp_path, 0.05, time.perf_counter)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(scraper.run(stop))
        await asyncio.sleep(1.0)  # the first sample includes session and NVML set-up
        stop.set()
        await task
    rows = read_server_rows(tmp_path / "server_metrics.jsonl")
    assert len(rows) >= 3
    assert all(t0 <= r.t <= time.perf_counter() for r in rows)
    assert "vllm:num_requests_running" in rows[0].values
    assert read_gpu_rows(tmp_path / "gpu.jsonl") == []  # no GPU here: skipped cleanly


def test_a_scrape_row_of_the_wrong_shape_is_rejected_naming_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "server_metrics.jsonl"
    good = ScrapeRow(t=1.0, values={"vllm:num_requests_running": 2.0}, mark="measured")
    path.write_text(good.model_dump_json() + "\n" + '{"t": 2.0, "values": {"vllm:num_requests_running": "two"}}\n')
    with pytest.raises(ScrapeRowError, match=r"server_metrics.jsonl:2 is not a ScrapeRow: values\.vllm:num_requests"
                       r"_running: Input should be a valid number"):
        read_server_rows(path)
    path.write_text(good.model_dump_json() + "\n" + '{"t": 2.0, "value')  # killed mid-write: the last line is skipped
    assert read_server_rows(path) == [good]
    gpu = tmp_path / "gpu.jsonl"
    gpu.write_text('{"t": 0.0, "gpu": 0, "name": "H100", "mem_used_bytes": 1, "power_w": 1.0, "watts": 1}\n')
    with pytest.raises(ScrapeRowError, match="watts: Extra inputs are not permitted"):
        read_gpu_rows(gpu)


def test_nvml_missing_warns_only_where_a_gpu_is_visible(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml fails, as without nvidia-ml-py
    node = tmp_path / "nvidiactl"
    with caplog.at_level(logging.DEBUG, logger="bench.scrape"):
        assert not _Nvml(device_nodes=[node]).available
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # no GPU: nothing to warn about
    caplog.clear()
    node.touch()
    assert cuda_device_visible([tmp_path / "nvidia0", node]) == node
    with caplog.at_level(logging.DEBUG, logger="bench.scrape"):
        assert not _Nvml(device_nodes=[node]).available
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(node) in warning.getMessage() and "nvidia-ml-py" in warning.getMessage()


@pytest.mark.gpu
def test_scraper_reads_nvml_on_a_gpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On a CUDA machine with nvidia-ml-py: one gpu.jsonl row per GPU per sample, with real readings."""

    async def scrape(url: str) -> Scraper:
        scraper = Scraper(url + "/metrics", tmp_path, 0.1, time.perf_counter)
        stop = asyncio.Event()
        task = asyncio.create_task(scraper.run(stop))
        await asyncio.sleep(1.0)
        stop.set()
        await task
        return scraper

    assert cuda_device_visible() is not None
    with caplog.at_level(logging.WARNING, logger="bench.scrape"), calibration_server() as url:
        scraper = asyncio.run(scrape(url))  # no pytest-asyncio needed on the GPU machine
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    gpus = len(scraper.gpu_names)
    rows = read_gpu_rows(tmp_path / "gpu.jsonl")
    assert gpus >= 1 and all(scraper.gpu_names)
    assert {r.gpu for r in rows} == set(range(gpus)) and len(rows) >= 3 * gpus
    assert all(r.mem_used_bytes > 0 and r.power_w > 0 for r in rows)
    for gpu in range(gpus):
        energy = [r.energy_j for r in rows if r.gpu == gpu]
        assert all(e is None for e in energy) or energy == sorted(e or 0.0 for e in energy)
    summary = summarize_gpu(rows, output_tokens=100)
    assert (summary["gpu_mem_peak_gib"] or 0) > 0 and (summary["gpu_energy_j"] or 0) > 0
