"""Expand a matrix into cells, and pick the built-in default matrix for the engines installed here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from backends import registry as backends
from backends.errors import BackendError
from bench.models.registry import Registry
from bench.run.schema import LoadScenario, Matrix, OptionSet


@dataclass(frozen=True)
class Cell:
    """One server configuration: a model on a backend with one option set, under one seed."""

    model: str
    backend: str
    option_set: OptionSet
    seed: int
    skip_reason: str | None = None

    @property
    def cell_id(self) -> str:
        """A stable, filesystem-safe id."""
        raw = f"{self.backend}__{self.model}__{self.option_set.name}__s{self.seed}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


def _skip_reason(registry: Registry, backend: str, model: str, option_set: OptionSet) -> str | None:
    """Why a cell cannot run here, or None."""
    try:
        reason = backends.availability(backend)
        if reason:
            return f"{backend} is not available: {reason}"
        backends.validate(backend, option_set.options, registry.get(model).format)
    except BackendError as exc:
        return str(exc)
    except Exception as exc:  # registry errors name the model and what to do
        return str(exc)
    return None


def expand(matrix: Matrix, registry: Registry) -> list[Cell]:
    """Every cell of the matrix, each marked with why it is skipped if it cannot run."""
    cells = []
    for seed in matrix.seeds:
        for base in matrix.models:
            for backend in matrix.backends:
                model = native_variant(registry, backend, base) if matrix.native_variants else base
                for option_set in matrix.option_sets:
                    reason = _skip_reason(registry, backend, model, option_set)
                    cells.append(Cell(model, backend, option_set, seed, reason))
    return cells


def native_variant(registry: Registry, backend: str, base: str) -> str:
    """The variant of ``base`` (itself or a derived entry) in the backend's most preferred format."""
    family = [registry.get(base), *registry.derived(base)]
    try:
        formats = backends.capabilities(backend).formats
    except BackendError:
        return base  # the cell is then skipped with the registry's message
    for fmt in formats:
        for entry in family:
            if entry.format == fmt and registry.location_of(entry.name).exists():
                return entry.name
    return base


def default_matrix(registry: Registry) -> Matrix:
    """The main job: the default model on every installed engine, concurrency 1 and 8, short prompts."""
    installed = tuple(name for name in backends.names() if backends.availability(name) is None)
    if not installed:
        raise BackendError("no backend is installed; run: pip install 'servebench[transformers]'")
    return Matrix(
        name="default",
        models=(registry.default,),
        backends=installed,
        scenarios=(LoadScenario(),),
        native_variants=True,
    )

