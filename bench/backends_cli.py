"""``bench backends``: the capability matrix, and whether each engine can run here."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def show_backends() -> None:
    """Print engines × formats × options, with availability here."""
    from backends import registry

    table = Table("backend", "kind", "formats", "kv-cache dtypes", "speculative", "prefix cache",
                  "batching", "parallel", "available here")
    for name in registry.names():
        caps = registry.capabilities(name)
        reason = registry.availability(name)
        table.add_row(
            name, registry.entry(name).kind, ", ".join(caps.formats), ", ".join(caps.kv_cache_dtypes),
            ", ".join(caps.speculative), _yes(caps.prefix_caching), caps.batching,
            ", ".join(caps.parallelism) or "-",
            "[green]yes[/green]" if reason is None else f"[yellow]no[/yellow]: {reason}",
        )
    console = Console()
    console.print(table)
    for name in registry.names():  # what a cell of the table cannot say: limits, mappings, platform differences
        console.print(f"[bold]{name}[/bold]: {registry.capabilities(name).notes}")


def register(app: typer.Typer) -> None:
    """Add ``bench backends``."""
    app.command("backends")(show_backends)
