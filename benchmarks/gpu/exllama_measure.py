"""One on-device ExLlama measurement: checkpoint, tests, and batch-1 decode speed at three layers.

Run by ``benchmarks/gpu/exllama_run.sh`` on the GPU machine (see benchmarks/gpu/README.md). For one engine:

1. the HF checkpoint of the bundled SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF on the GPU);
2. its EXL2 (V2) or EXL3 (V3) conversion with the library's own converter, 4.0 bits per weight;
3. ``tests/test_exllama_gpu.py`` for that engine;
4. decode speed at batch 1, to tell kernel time from Python overhead from server overhead:
   ``generator``: the library's generator alone (one job, 128 prompt tokens, 256 new, EOS ignored);
   ``server``: our engine behind ``create_app`` with the official openai client, streaming;
   and, for V2, ``forward``: a bare ``model.forward`` loop over one token with the cache (no sampler);
   CUDA-synchronized, warm (one untimed run first), median of 5.

Results go to ``$OUT/<engine>.json``; the table at the end is what a reply shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path("/tmp/exl")
PROMPT_TOKENS, NEW_TOKENS, RUNS = 128, 256, 5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def hf_checkpoint() -> Path:
    out = ROOT / "models" / "smollm2-hf"
    if not (out / "config.json").exists():
        from backends.prepare import dequantize_gguf_to_hf

        dequantize_gguf_to_hf(ROOT / "stash" / "SmolLM2-135M-Instruct.Q4_1.gguf", out)
    # transformers 5 writes theta only under rope_parameters; exllamav2 0.3.2's converter reads the top-level
    # key and would otherwise calibrate with theta 10000 (measured: degenerate "a a a" output).
    config = json.loads((out / "config.json").read_text())
    theta = config.get("rope_parameters", {}).get("rope_theta")
    if theta is not None and "rope_theta" not in config:
        config["rope_theta"] = theta
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def random_checkpoint(shape: str, tokenizer: Path) -> Path:
    """A random-weight fp16 checkpoint of ``shape`` (``bench models random``), for engines that cannot run
    SmolLM2-135M (exllamav3 1.6.5 needs a hidden size that is a multiple of 128)."""
    out = ROOT / "models" / f"{shape}-random"
    if not (out / "config.json").exists():
        registry = ROOT / "models.yaml"
        registry.write_text(Path("models.yaml").read_text())
        subprocess.run([sys.executable, "-m", "bench", "models", "random", f"{shape}-random", "--shape", shape,
                        "--tokenizer", str(tokenizer), "--out", str(out), "--device", "cuda", "--dtype", "float16",
                        "--registry", str(registry)], check=True)
    return out


def random_run(engine: str, shape: str, tokenizer: Path, result: dict[str, Any], save: Callable[[], None]) -> None:
    """Mechanics and speed on random weights: our server over each cache kind and n-gram speculation (the text
    is noise, so nothing checks answers)."""
    path = random_checkpoint(shape, tokenizer)
    result["checkpoint"] = f"{shape} random weights, fp16"
    save()
    for kv, speculative in (("auto", "none"), ("q6", "none"), ("k8v4", "none"), ("q4", "none"), ("auto", "ngram")):
        key = f"random/kv={kv}/spec={speculative}"
        try:
            result[key] = {"server": server_rate(engine, path, "exl3", kv, speculative)}
        except Exception as exc:  # one configuration failing is a result; the others still run
            result[key] = {"error": f"{type(exc).__name__}: {exc}"}
        save()
        log(f"{key}: {json.dumps(result[key])}")


def wait_for(marker: Path, limit_s: float) -> str:
    start = time.monotonic()
    while not marker.exists():
        if time.monotonic() - start > limit_s:
            raise TimeoutError(f"{marker} did not appear in {limit_s:.0f}s")
        time.sleep(2)
    return marker.read_text().strip()


def convert(engine: str, hf: Path, out: Path) -> float:
    if (out / "config.json").exists():
        return 0.0
    work = ROOT / "work" / engine
    work.mkdir(parents=True, exist_ok=True)
    if engine == "exllamav2":
        cmd = ["-m", "exllamav2.conversion.convert_exl2", "-i", str(hf), "-o", str(work), "-cf", str(out),
               "-b", "4.0", "-r", "40", "-mr", "8", "-l", "1024", "-ml", "1024"]
    else:
        cmd = ["-m", "exllamav3.conversion.convert_model", "-i", str(hf), "-w", str(work), "-o", str(out),
               "-b", "4.0", "-cr", "40", "-cc", "1024"]
    start = time.monotonic()
    with (ROOT / "logs" / f"convert_{engine}.log").open("w") as fh:
        subprocess.run([sys.executable, *cmd], check=True, stdout=fh, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def timed(fn: Callable[[], int]) -> dict[str, float]:
    """Tokens/s of ``fn`` (which returns the tokens it made): one warm-up, then the median of RUNS."""
    import torch

    fn()
    rates = []
    for _ in range(RUNS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        n = fn()
        torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - start))
    return {"median_tok_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "loadavg_1m": os.getloadavg()[0]}


def prompt_ids(tokenizer: Any) -> list[int]:
    text = " ".join(f"word{i}" for i in range(400))
    return list(tokenizer.encode(text, add_special_tokens=False))[:PROMPT_TOKENS]


def v2_library(path: Path, ids: list[int], kv: str) -> dict[str, Any]:
    import torch
    from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Cache_Q4, ExLlamaV2Config, ExLlamaV2Tokenizer
    from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

    config = ExLlamaV2Config(str(path))
    config.max_seq_len = 1024
    model = ExLlamaV2(config)
    cache = (ExLlamaV2Cache_Q4 if kv == "q4" else ExLlamaV2Cache)(model, max_seq_len=1024, lazy=True)
    model.load_autosplit(cache, progress=False)
    prompt = torch.tensor([ids], dtype=torch.long)

    def forward() -> int:
        cache.current_seq_len = 0
        model.forward(prompt[:, :-1], cache, preprocess_only=True)
        token = prompt[:, -1:]
        for _ in range(NEW_TOKENS):
            token = model.forward(token, cache).argmax(-1).cpu()
        return NEW_TOKENS

    gen = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=ExLlamaV2Tokenizer(config), paged=False,
                                    max_batch_size=1)

    def generator() -> int:
        job = ExLlamaV2DynamicJob(input_ids=prompt, max_new_tokens=NEW_TOKENS, stop_conditions=[],
                                  gen_settings=ExLlamaV2Sampler.Settings.greedy())
        gen.enqueue(job)
        n = 0
        while gen.num_remaining_jobs():
            for r in gen.iterate():
                if r["stage"] == "streaming" and "token_ids" in r:
                    n += r["token_ids"].shape[-1]
        return n

    with torch.inference_mode():
        out = {"forward": timed(forward), "generator": timed(generator)}
    return out


def v3_library(path: Path, ids: list[int], kv: str) -> dict[str, Any]:
    import torch
    from exllamav3 import Cache, CacheLayer_fp16, CacheLayer_quant, Config, Generator, Job, Model, Tokenizer
    from exllamav3.generator.sampler import ArgmaxSampler

    config = Config.from_directory(str(path))
    model = Model.from_config(config)
    layer = {"layer_type": CacheLayer_quant, "k_bits": 4, "v_bits": 4} if kv == "q4" else {
        "layer_type": CacheLayer_fp16}
    cache = Cache(model, max_num_tokens=1024, **layer)
    model.load(progressbar=False)
    gen = Generator(model=model, cache=cache, tokenizer=Tokenizer.from_config(config), max_batch_size=1)
    prompt = torch.tensor([ids], dtype=torch.long)

    def generator() -> int:
        gen.enqueue(Job(input_ids=prompt, max_new_tokens=NEW_TOKENS, stop_conditions=[], sampler=ArgmaxSampler()))
        n = 0
        while gen.num_remaining_jobs():
            for r in gen.iterate():
                if r["stage"] == "streaming" and "token_ids" in r:
                    n += r["token_ids"].shape[-1]
        return n

    with torch.inference_mode():
        out = {"generator": timed(generator)}
    return out


def server_rate(engine: str, path: Path, fmt: str, kv: str, speculative: str = "none") -> dict[str, Any]:
    """Streaming decode rate through our server: tokens after the first over the time after the first."""
    import openai
    import uvicorn

    from backends import registry
    from backends.base import EngineOptions
    from backends.net import free_port
    from servers.app import create_app
    from servers.settings import ServerSettings

    options = EngineOptions(max_batch=1, max_model_len=1024, kv_cache_dtype=kv, speculative=speculative)
    registry.validate(engine, options, fmt)
    eng = registry.load_class(engine)("m", path, fmt, options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(eng, ServerSettings(port=port, served_model_name="m",
                                                                          max_concurrency=1)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    prompt = eng.detokenize(prompt_ids(eng.tokenizer))
    rates, ttfts = [], []
    try:
        for i in range(RUNS + 1):
            sent = time.perf_counter()
            stamps: list[float] = []
            stream = client.completions.create(model="m", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    stamps.append(time.perf_counter())
            if i and len(stamps) > 1:
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
                ttfts.append(stamps[0] - sent)
        sample = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32,
            temperature=0).choices[0].message.content
    finally:
        server.should_exit = True
        thread.join(60)
    return {"median_tok_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "median_ttft_ms": 1000 * statistics.median(ttfts), "text_chunks_per_run": len(stamps),
            "loadavg_1m": os.getloadavg()[0], "chat_sample": sample}


def paused_builds(stop: bool) -> str:
    """Stop (or resume) the detached kernel builds while timing, so compilers don't share the CPU."""
    import signal

    pid_file = ROOT / "build.pid"
    if not pid_file.exists():
        return "no build running"
    try:
        os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGSTOP if stop else signal.SIGCONT)
    except ProcessLookupError:
        return "build already finished"
    return "build paused during timing" if stop else "build resumed"


def run_tests(engine: str, out: Path, env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exllama_gpu.py",
           "-k", engine, "-o", "addopts=", "-rA", f"--junitxml={out / f'{engine}_tests.xml'}"]
    with (out / f"{engine}_tests.log").open("w") as fh:
        return subprocess.run(cmd, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT).returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", choices=["exllamav2", "exllamav3"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/exl/out")))
    parser.add_argument("--quick", action="store_true", help="tests on the fp16 HF checkpoint only")
    parser.add_argument("--random-shape", help="instead of SmolLM2: server timing on a random-weight checkpoint "
                        "of this bench models random shape (needs --tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer folder for --random-shape")
    args = parser.parse_args()
    engine, out = args.engine, args.out
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"engine": engine}

    def save() -> None:  # after each step, so a call cut off by its time limit still returns what ran
        (out / f"{engine}.json").write_text(json.dumps(result, indent=2))

    if args.random_shape:
        log(f"waiting for the {engine} build")
        result["build"] = wait_for(ROOT / "logs" / ("v2.done" if engine == "exllamav2" else "v3.done"), 560)
        save()
        random_run(engine, args.random_shape, args.tokenizer, result, save)
        return
    hf = hf_checkpoint()
    log(f"hf checkpoint at {hf}; waiting for the {engine} build")
    result["build"] = wait_for(ROOT / "logs" / ("v2.done" if engine == "exllamav2" else "v3.done"), 560)
    fmt = "exl2" if engine == "exllamav2" else "exl3"
    if args.quick:  # the library loads unquantized HF safetensors too
        result["convert_s"], result["checkpoint"] = 0.0, "hf fp16"
        result["tests_rc"] = run_tests(engine, out, {"EXL2_DIR" if fmt == "exl2" else "EXL3_DIR": str(hf)})
        save()
        return
    quant = ROOT / "models" / f"smollm2-{fmt}"
    result["convert_s"] = convert(engine, hf, quant)
    log(f"converted in {result['convert_s']:.0f}s; running tests")
    result["tests_rc"] = run_tests(engine, out, {"EXL2_DIR" if fmt == "exl2" else "EXL3_DIR": str(quant)})
    save()
    log(f"tests rc={result['tests_rc']}; timing")
    from transformers import AutoTokenizer

    ids = prompt_ids(AutoTokenizer.from_pretrained(str(hf)))
    library = v2_library if engine == "exllamav2" else v3_library
    targets = [(fmt, quant)] + ([("hf", hf)] if engine == "exllamav2" else [])
    result["timing_note"] = paused_builds(stop=True)
    try:
        for name, path in targets:
            for kv in ("auto", "q4"):
                key = f"{name}/kv={kv}"
                result[key] = {"library": library(path, ids, kv), "server": server_rate(engine, path, name, kv)}
                save()
                log(f"{key}: {json.dumps(result[key])}")
    finally:
        paused_builds(stop=False)
    save()
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['engine']}  build: {result['build']}  convert: {result['convert_s']:.0f}s  "
          f"tests rc: {result['tests_rc']}")
    print(f"{'checkpoint/kv':<16}{'forward':>10}{'generator':>11}{'server':>9}{'ttft ms':>9}  load")
    for key, val in result.items():
        if not isinstance(val, dict) or "server" not in val:
            continue
        lib, srv = val["library"], val["server"]
        fwd = f"{lib['forward']['median_tok_s']:.0f}" if "forward" in lib else "-"
        print(f"{key:<16}{fwd:>10}{lib['generator']['median_tok_s']:>11.0f}{srv['median_tok_s']:>9.0f}"
              f"{srv['median_ttft_ms']:>9.1f}  {srv['loadavg_1m']:.1f}")


if __name__ == "__main__":
    main()
