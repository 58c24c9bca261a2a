"""``bench serve``: one OpenAI-compatible endpoint over any backend.

The engine flags are generated from :class:`backends.base.EngineOptions` (:mod:`bench.flags`): each option is
declared once there, with its help and default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from backends.base import EngineOptions
from backends.checkpoints import Registry, RegistryError, load_registry
from backends.errors import BackendError
from bench.flags import command, model_flags

# ``quantization`` comes from the checkpoint's models.yaml entry or a matrix, not from a flag.
ENGINE_FLAGS = model_flags(EngineOptions, [n for n in EngineOptions.model_fields if n != "quantization"])


@command(ENGINE_FLAGS)
def serve(
    fields: dict[str, Any],
    backend: str = typer.Option("transformers", help="transformers, llamacpp, vllm, exllamav2, exllamav3."),
    model: str = typer.Option(None, help="Model name from models.yaml, or a Hugging Face repo id ORG/NAME "
                              "(fetched into the hub cache; default: the registry's default)."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, help="Require this bearer key on /v1.", envvar="SERVEBENCH_API_KEY"),
    max_queue: int | None = typer.Option(
        None, help="Requests allowed to wait beyond the batch; 429 past it (default 64). In-process engines "
        "only: llamacpp and vllm refuse another value (servebench sets no queue bound on their servers)."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Let the checkpoint's own Python code run; its models.yaml entry must "
        "say trust_remote_code: true as well (never the default)."),
    options_json: str = typer.Option(None, hidden=True, help="All engine options as JSON (used by bench run)."),
    registry: Path = typer.Option(None, help="models.yaml to use."),
) -> None:
    """Serve a model until Ctrl-C, then drain running requests and exit."""
    from servers.launch import DEFAULT_MAX_QUEUE, LaunchError, build_spec, check_max_queue, serve_forever
    from servers.settings import ServerSettings

    console = Console(stderr=True)
    try:
        check_max_queue(backend, max_queue)  # before anything is loaded
        options = (EngineOptions.model_validate_json(options_json) if options_json
                   else EngineOptions.model_validate(fields))
        listed = load_registry(registry)
        name = model or listed.default
        reg = listed.with_model(name)
        spec = build_spec(reg, backend, name, options, host=host, port=port, api_key=api_key,
                          trust_remote_code=trust_remote_code)
        _print_provenance(console, reg, name)
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


def _print_provenance(console: Console, reg: Registry, name: str) -> None:
    """Say which repo, revision and commit a hub model is (build_spec has fetched it already)."""
    found = reg.provenance(name)
    if found:
        console.print(f"{name}: hub {found['repo']} revision {found['revision']} commit {found['commit']} "
                      f"({found['path']})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``bench serve``."""
    app.command("serve")(serve)
