"""``bench models list|show|prepare|random|add``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from backends.checkpoints import RegistryError, load_registry

_REGISTRY_OPT = typer.Option(None, "--registry", help="models.yaml to use (default: ./models.yaml).")


def _fail(console: Console, exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


def list_models(registry: Path | None = _REGISTRY_OPT) -> None:
    """List the checkpoints in models.yaml and whether each is present."""
    console = Console()
    try:
        reg = load_registry(registry)
    except RegistryError as exc:
        _fail(console, exc)
    table = Table("name", "format", "derived from", "ready", "path")
    for entry in reg.models:
        where = reg.location_of(entry.name)
        mark = "[green]yes[/green]" if where.exists() else "[yellow]no[/yellow]"
        default = " (default)" if entry.name == reg.default else ""
        table.add_row(entry.name + default, entry.format or "(from repo)", entry.derived_from or "", mark, str(where))
    console.print(table)


def show_model(name: str, registry: Path | None = _REGISTRY_OPT) -> None:
    """Print one entry, with its resolved path."""
    console = Console()
    try:
        reg = load_registry(registry)
        entry = reg.get(name)
    except RegistryError as exc:
        _fail(console, exc)
    data = entry.model_dump(exclude_defaults=True, mode="json")
    data["resolved_path"] = str(reg.location_of(name))
    data["ready"] = reg.location_of(name).exists()
    console.print(yaml.safe_dump(data, sort_keys=False).rstrip())


def prepare_models(
    name: str = typer.Argument(None, help="Base model (default: the registry's default)."),
    only: list[str] = typer.Option(None, "--only", help="Prepare just these derived entries (and their sources)."),
    registry: Path | None = _REGISTRY_OPT,
) -> None:
    """Derive and cache the checkpoints made from a model (HF bf16, GGUF f16/Q8_0/Q4_K_M)."""
    from backends.prepare import PrepareError, prepare

    console = Console()
    try:
        reg = load_registry(registry)
        base = name or reg.default

        def report(entry: str, made: bool) -> None:
            console.print(f"{'made' if made else 'cached'}  {entry}  {reg.location_of(entry)}")

        with console.status(f"preparing checkpoints derived from {base} ..."):
            prepare(reg, base, set(only) if only else None, on_step=report)
    except (RegistryError, PrepareError) as exc:
        _fail(console, exc)


def random_model(
    name: str = typer.Argument(..., help="Name of the new models.yaml entry."),
    shape: str = typer.Option(..., "--shape", help="Architecture to copy: llama-3.1-8b, llama-3.2-1b, tiny-llama."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="models.yaml entry or folder whose HF tokenizer to pad."),
    out: Path = typer.Option(None, "--out", help="Checkpoint folder (default: {cache}/models/random/NAME)."),
    device: str = typer.Option("cpu", "--device", help="Where to draw the weights: cpu or cuda."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Weight dtype: bfloat16, float16 or float32."),
    seed: int = typer.Option(0, "--seed"),
    registry: Path | None = _REGISTRY_OPT,
) -> None:
    """Make a random-weight checkpoint of a real shape (for speed runs only) and add it to models.yaml."""
    from backends.checkpoints import append_entry
    from backends.paths import cache_dir
    from bench.models.random import RandomModelError, make_random_model, random_entry, shape_config

    console = Console()
    try:
        reg = load_registry(registry)
        shape_config(shape)
        if dtype not in ("bfloat16", "float16", "float32"):
            raise RandomModelError(f"dtype must be bfloat16, float16 or float32, not {dtype!r}")
        source = Path(tokenizer) if Path(tokenizer).is_dir() else reg.path_of(tokenizer)
        target = out or cache_dir() / "models" / "random" / name
        entry = random_entry(name, shape, target.resolve(), tokenizer, dtype, seed)
        reg.check_new(entry)  # before drawing gigabytes of weights
        with console.status(f"drawing {shape} weights on {device} ..."):
            make_random_model(shape, source, target, device=device, dtype=dtype, seed=seed)
        append_entry(entry, reg.source)
    except (RegistryError, RandomModelError, OSError) as exc:
        _fail(console, exc)
    console.print(f"made  {name}  {target}  ({shape}, random weights: speed runs only)")


def add_model(
    repo: str = typer.Argument(..., help="Hugging Face repo id, ORG/NAME."),
    file: str | None = typer.Option(None, "--file", help="One file of the repo (a GGUF of a GGUF repo), or a glob."),
    name: str | None = typer.Option(None, "--name", help="Entry name (default: the file's stem, else NAME)."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit (a commit pins it)."),
    fmt: str | None = typer.Option(None, "--format", help="Expected format (default: read from the repo)."),
    fetch: bool = typer.Option(True, "--fetch/--no-fetch", help="Download now (into the hub cache) and record the "
                               "format read from the files; --no-fetch writes the entry only."),
    registry: Path | None = _REGISTRY_OPT,
) -> None:
    """Add a ``hub:`` entry to models.yaml for a Hugging Face repo."""
    from backends.checkpoints import append_entry, hub_entry

    console = Console()
    try:
        reg = load_registry(registry)
        entry = hub_entry(repo, name=name or _default_name(repo, file), revision=revision, file=file,
                          fmt=fmt)  # type: ignore[arg-type]  # the model validates the format's spelling
        reg.check_new(entry)  # before a download
        if fetch:
            snap = entry.snapshot()
            entry = entry.model_copy(update={"format": snap.format})
            console.print(f"fetched {repo} revision {snap.revision} commit {snap.commit}: {snap.format}, {snap.path}",
                          soft_wrap=True)
        append_entry(entry, reg.source)
    except RegistryError as exc:
        _fail(console, exc)
    console.print(f"added  {entry.name}  (hub {repo}) to {reg.source}")


def _default_name(repo: str, file: str | None) -> str:
    """The file's stem for one named file, else the repo's NAME."""
    if file and not any(c in file for c in "*?["):
        return Path(file).stem
    return repo.split("/", 1)[1]


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group."""
    group = typer.Typer(help="The model registry (models.yaml).", no_args_is_help=True)
    group.command("list")(list_models)
    group.command("show")(show_model)
    group.command("prepare")(prepare_models)
    group.command("random")(random_model)
    group.command("add")(add_model)
    app.add_typer(group, name="models")
