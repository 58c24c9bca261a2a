"""``bench serve``: one OpenAI-compatible endpoint over any backend."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from backends.base import EngineOptions
from backends.errors import BackendError
from bench.models.registry import RegistryError, load_registry

KV_HELP = "KV-cache dtype: auto, fp8, q8, q6, q4 or k<bits>v<bits> (key/value bits apart, e.g. k8v4)."
SPEC_HELP = "Speculative decoding: none, ngram, draft:<model>, eagle:<path>."


def engine_options(**flags: object) -> EngineOptions:
    """Build the shared option model from CLI flags (None means "not given")."""
    return EngineOptions.model_validate({k: v for k, v in flags.items() if v is not None})


def serve(
    backend: str = typer.Option("transformers", help="transformers, llamacpp, vllm, exllamav2, exllamav3."),
    model: str = typer.Option(None, help="Model name from models.yaml (default: the registry's default)."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, help="Require this bearer key on /v1.", envvar="SERVEBENCH_API_KEY"),
    max_queue: int | None = typer.Option(
        None, help="Requests allowed to wait beyond the batch; 429 past it (default 64). In-process engines "
        "only: llamacpp and vllm refuse another value (servebench sets no queue bound on their servers)."),
    kv_cache_dtype: str = typer.Option(None, help=KV_HELP),
    speculative: str = typer.Option(None, help=SPEC_HELP),
    num_speculative_tokens: int = typer.Option(None, help="Tokens proposed per speculative step (default 4); "
                                               "needs --speculative."),
    prefix_caching: bool = typer.Option(None, "--prefix-caching/--no-prefix-caching"),
    max_batch: int = typer.Option(None, help="Sequences decoded together."),
    max_model_len: int = typer.Option(None, help="Context window to serve."),
    dtype: str = typer.Option(None, help="auto, float32, float16, bfloat16."),
    device: str = typer.Option(None, help="auto, cpu, cuda."),
    threads: int = typer.Option(None, help="CPU threads for the engine."),
    tensor_parallel_size: int = typer.Option(None, help="GPUs per model replica (vLLM)."),
    pipeline_parallel_size: int = typer.Option(None, help="Pipeline stages (vLLM)."),
    data_parallel_size: int = typer.Option(None, help="Model replicas (vLLM)."),
    kv_cache_memory_bytes: int = typer.Option(None, help="Bytes reserved for the KV cache (vLLM)."),
    options_json: str = typer.Option(None, hidden=True, help="All engine options as JSON (used by bench run)."),
    registry: Path = typer.Option(None, help="models.yaml to use."),
) -> None:
    """Serve a model until Ctrl-C, then drain running requests and exit."""
    from servers.launch import DEFAULT_MAX_QUEUE, LaunchError, build_spec, check_max_queue, serve_forever
    from servers.settings import ServerSettings

    console = Console(stderr=True)
    try:
        check_max_queue(backend, max_queue)  # before anything is loaded
        options = EngineOptions.model_validate_json(options_json) if options_json else engine_options(
            kv_cache_dtype=kv_cache_dtype, speculative=speculative, num_speculative_tokens=num_speculative_tokens,
            prefix_caching=prefix_caching, max_batch=max_batch, max_model_len=max_model_len, dtype=dtype,
            device=device, threads=threads, tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size, data_parallel_size=data_parallel_size,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
        )
        reg = load_registry(registry)
        name = model or reg.default
        spec = build_spec(reg, backend, name, options, host=host, port=port, api_key=api_key)
        settings = ServerSettings(host=host, port=port, api_key=api_key, served_model_name=name,
                                  max_queue=DEFAULT_MAX_QUEUE if max_queue is None else max_queue,
                                  max_concurrency=options.max_batch)
    except (ValidationError, RegistryError, BackendError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        serve_forever(spec, settings)
    except KeyboardInterrupt:
        console.print("stopped")
    except (BackendError, LaunchError, RuntimeError) as exc:  # build, venv or start-up failures
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add ``bench serve``."""
    app.command("serve")(serve)
