"""The ``bench`` command. Each area registers its sub-commands from its own ``cli`` module."""

from __future__ import annotations

import importlib

import typer

# Modules exposing ``register(app: typer.Typer) -> None``; they must import nothing heavy at top level.
COMMAND_MODULES: tuple[str, ...] = (
    "bench.models.cli",
    "bench.serve_cli",
    "bench.backends_cli",
    "bench.evals.cli",
    "bench.train.cli",
    "bench.quantize.cli",
    "bench.load.cli",
    "bench.run.cli",
)


def build_app() -> typer.Typer:
    """Assemble the CLI from every registered command module."""
    app = typer.Typer(
        name="bench",
        help="Serve, load-test, evaluate and report on LLM checkpoints.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app)
    return app


def main() -> None:
    """Console entry point."""
    build_app()()
