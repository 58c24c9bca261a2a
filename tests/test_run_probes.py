"""Server-side figures for bench run: KV capacity from logs and gauges, counter deltas, what fits, RSS."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.metrics.server import ScrapeRow, prefix_hit_rate, speculative_figures
from bench.run.probes import MemorySampler, kv_from_log, kv_from_metrics, tree_rss_bytes
from bench.run.scenarios import fits, repetitive_prompts

VLLM_LOG = (
    "(Worker pid=24218) INFO [cpu_worker.py:260] Explicitly set (1.0/22.71) GiB for KV cache on node 0.\n"
    "(EngineCore pid=24096) INFO 11-25 13:10:38 [kv_cache_utils.py:2327] CPU KV cache size: 93,184 tokens, "
    "Maximum concurrency for 1,024 tokens per request: 91.00x\n"
)
LLAMA_LOG = """0.00.182.863 I llama_context: n_ctx                 = 2048
0.00.183.175 I llama_kv_cache:        CPU KV buffer size =    23.91 MiB
"""


def test_kv_capacity_from_vllm_and_llama_logs() -> None:
    vllm = kv_from_log(VLLM_LOG)
    assert vllm is not None and vllm.capacity_tokens == 93_184 and vllm.kv_bytes == 2**30
    assert vllm.tokens_per_gib == 93_184
    llama = kv_from_log(LLAMA_LOG)
    assert llama is not None and llama.capacity_tokens == 2048
    assert llama.kv_bytes is not None and abs(llama.kv_bytes / 2**20 - 23.91) < 1e-6
    assert kv_from_log("nothing here") is None


# vLLM 0.25 on two H200s with tensor parallelism 2 (reports/tp-scaling-h200x2): only the first rank logs its memory.
VLLM_TP2_LOG = (
    "(Worker_TP0 pid=2025) INFO 11-30 13:52:33 [gpu_worker.py:538] Available KV cache memory: 119.93 GiB\n"
    "(EngineCore pid=1914) INFO 11-30 13:52:33 [kv_cache_utils.py:2146] GPU KV cache size: 1,964,896 tokens\n"
)


def test_kv_memory_of_a_tensor_parallel_vllm_counts_every_gpu() -> None:
    one_rank = kv_from_log(VLLM_TP2_LOG)
    both = kv_from_log(VLLM_TP2_LOG, gpus=2)
    assert one_rank is not None and both is not None and both.capacity_tokens == 1_964_896
    assert both.kv_bytes == 2 * 119.93 * 2**30
    # Llama-3.1-8B in bf16 holds 8192 tokens per GiB of KV (128 KiB per token) whatever the split.
    assert both.tokens_per_gib is not None and abs(both.tokens_per_gib - 8192) < 5


def test_kv_capacity_from_servebench_gauge() -> None:
    text = '# HELP x\nservebench:kv_cache_capacity_tokens{model_name="m"} 4096.0\nvllm:num_requests_running 0\n'
    found = kv_from_metrics(text)
    assert found is not None and found.capacity_tokens == 4096 and found.tokens_per_gib is None


def _rows(*values: dict[str, float]) -> list[ScrapeRow]:
    return [ScrapeRow(t=float(i), values=v) for i, v in enumerate(values)]


def test_prefix_hit_rate_for_both_naming_schemes() -> None:
    vllm = _rows({"vllm:prefix_cache_hits_total": 100, "vllm:prefix_cache_queries_total": 200},
                 {"vllm:prefix_cache_hits_total": 400, "vllm:prefix_cache_queries_total": 800})
    assert prefix_hit_rate(vllm) == 0.5
    llama = _rows({"llamacpp:prompt_tokens_cached_total": 0, "llamacpp:prompt_tokens_total": 128},
                  {"llamacpp:prompt_tokens_cached_total": 576, "llamacpp:prompt_tokens_total": 320})
    assert prefix_hit_rate(llama) == 576 / (576 + 192)
    assert prefix_hit_rate(_rows({})) is None


def test_speculative_acceptance_rate_and_length() -> None:
    names = ("llamacpp:spec_decode_num_draft_tokens_total", "llamacpp:spec_decode_num_accepted_tokens_total",
             "llamacpp:spec_decode_num_drafts_total")
    rows = _rows(dict.fromkeys(names, 0.0), dict(zip(names, (40.0, 30.0, 10.0), strict=True)))
    figures = speculative_figures(rows)
    assert figures["spec_acceptance_rate"] == 0.75 and figures["spec_acceptance_length"] == 4.0
    assert speculative_figures(_rows({}, {}))["spec_acceptance_rate"] is None


def test_what_fits_in_the_kv_cache() -> None:
    assert fits(2048, 264, 4) == {"kv": 7, "served": 4}
    assert fits(2048, 1024, 4) == {"kv": 2, "served": 2}
    assert fits(None, 100, 4) == {"kv": None, "served": None}


def test_repetitive_prompts_repeat_a_line(tmp_path: Path) -> None:
    workload = repetitive_prompts(tmp_path / "p.jsonl", 3, 6, 4, 32, seed=1)
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 3 and workload.output_tokens == 32
    prompt = json.loads(lines[0])["prompt"]
    parts = prompt.splitlines()
    assert len(parts) == 4 and len(set(parts)) == 1 and len(parts[0].split()) == 6


def test_rss_of_this_process_tree() -> None:
    assert tree_rss_bytes(os.getpid()) > 10 * 2**20
    assert tree_rss_bytes(2**22 + 12345) == 0
    with MemorySampler(os.getpid(), interval_s=0.05) as sampler:
        blob = bytearray(64 * 2**20)
        peak = sampler.take_peak()
        del blob
    assert peak * 2**30 > 64 * 2**20
