"""Expand a matrix into cells, and pick the built-in default matrix for the engines installed here.

A cell is one server configuration (model, backend, resolved options, seed) plus the scenarios that run
on it. Scenario variants (see :meth:`bench.run.schema.KVCacheScenario.variants`) that resolve to the same
options share a cell, so the server starts once for all of them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backends import registry as backends
from backends.base import EngineOptions
from backends.checkpoints import Registry
from backends.errors import BackendError
from bench.run.schema import EvalScenario, LoadScenario, Matrix, OptionSet, Scenario


@dataclass(frozen=True)
class Cell:
    """One server configuration: a model on a backend with one option set, under one seed."""

    model: str
    backend: str
    option_set: OptionSet
    seed: int
    skip_reason: str | None = None
    scenarios: tuple[str, ...] = ()
    base_option_set: str = ""

    @property
    def cell_id(self) -> str:
        """A stable, filesystem-safe id."""
        raw = f"{self.backend}__{self.model}__{self.option_set.name}__s{self.seed}"
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", raw)


def variant_label(base: EngineOptions, resolved: EngineOptions) -> str:
    """A short name for how ``resolved`` differs from ``base`` (``""`` when it does not)."""
    parts = []
    if resolved.kv_cache_dtype != base.kv_cache_dtype:
        parts.append(f"kv-{resolved.kv_cache_dtype}")
    if resolved.prefix_caching != base.prefix_caching:
        parts.append("prefix" if resolved.prefix_caching else "no-prefix")
    if resolved.speculative != base.speculative:
        parts.append("no-spec" if resolved.speculative == "none" else "spec-" + resolved.speculative)
    if resolved.speculative_tokens != base.speculative_tokens and resolved.speculative != "none":
        parts.append(f"k{resolved.speculative_tokens}")
    return "+".join(parts)


def resolve(option_set: OptionSet, overrides: dict[str, Any]) -> OptionSet:
    """The option set with a scenario variant's overrides applied (validated like any option set)."""
    options = EngineOptions.model_validate({**option_set.options.model_dump(), **overrides})
    label = variant_label(option_set.options, options)
    return OptionSet(name=f"{option_set.name}+{label}" if label else option_set.name, options=options,
                     models=option_set.models, backends=option_set.backends)


def server_configs(matrix: Matrix) -> list[tuple[OptionSet, OptionSet, tuple[str, ...]]]:
    """(base option set, resolved option set, scenario names) for every distinct server configuration."""
    found: dict[str, tuple[OptionSet, OptionSet, list[str]]] = {}
    for base in matrix.option_sets:
        for scenario in matrix.scenarios:
            for overrides in scenario.variants():
                resolved = resolve(base, overrides)
                entry = found.setdefault(resolved.name, (base, resolved, []))
                if scenario.name not in entry[2]:
                    entry[2].append(scenario.name)
    return [(base, resolved, tuple(names)) for base, resolved, names in found.values()]


def scenario_skip_reason(backend: str, scenario: Scenario) -> str | None:
    """Why ``backend`` cannot run ``scenario`` (an engine capability it lacks), or None.

    A loglikelihood eval needs the prompt's own logprobs (``echo=true``); llama-server refuses ``echo``,
    so without this check every sample of such a cell would fail while the cell looked fine.
    """
    if not isinstance(scenario, EvalScenario) or scenario.mode != "loglikelihood":
        return None
    try:
        capable = backends.capabilities(backend).prompt_logprobs
    except BackendError:
        return None  # an unknown backend is refused by the cell's own check, with a "did you mean"
    if capable:
        return None
    return (f"{scenario.name}: {backend} returns no prompt logprobs (echo=true), which --mode loglikelihood "
            f"needs; use mode: generate on this engine")


def _skip_reason(registry: Registry, backend: str, model: str, option_set: OptionSet,
                 scenarios: Sequence[Scenario] = ()) -> str | None:
    """Why a cell cannot run here, or None.

    A cell whose every scenario the backend cannot run is skipped with their reasons; a cell that can run
    some of them starts, and :func:`bench.run.scenarios.run_eval_scenario` records the rest as skipped.
    """
    try:
        reason = backends.availability(backend)
        if reason:
            return f"{backend} is not available: {reason}"
        fmt = registry.known_format(model)  # a hub model not downloaded yet is checked when its cell starts
        if fmt is not None:
            backends.validate(backend, option_set.options, fmt)
    except BackendError as exc:
        return str(exc)
    except Exception as exc:  # registry errors name the model and what to do
        return str(exc)
    reasons = [scenario_skip_reason(backend, scenario) for scenario in scenarios]
    if reasons and all(reasons):
        return "; ".join(r for r in reasons if r)
    return None


def expand(matrix: Matrix, registry: Registry) -> list[Cell]:
    """Every cell of the matrix, each marked with why it is skipped if it cannot run.

    An option set with ``models`` or ``backends`` makes cells only for the matrix models and backends its globs
    match (its variants likewise); the others get no cell of that set.
    """
    configs = server_configs(matrix)
    cells = []
    for seed in matrix.seeds:
        for base_model in matrix.models:
            for backend in matrix.backends:
                model = native_variant(registry, backend, base_model) if matrix.native_variants else base_model
                for base, option_set, names in configs:
                    if not base.applies_to(base_model, backend):  # no cell at all, not even a skipped one
                        continue
                    scenarios = [s for s in matrix.scenarios if s.name in names]
                    reason = _skip_reason(registry, backend, model, option_set, scenarios)
                    cells.append(Cell(model, backend, option_set, seed, reason, names, base.name))
    return cells


def select(cells: list[Cell], patterns: Sequence[str]) -> list[Cell]:
    """The cells whose id matches one of the glob ``patterns`` (all of them when none are given).

    A pattern that matches nothing is an error that lists the ids, so a typo never runs an empty matrix.
    """
    if not patterns:
        return cells
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.cell_id, p) for c in cells)]
    if unmatched:
        ids = ", ".join(c.cell_id for c in cells)
        raise ValueError(f"--only {', '.join(unmatched)} matches no cell; the cells are: {ids}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.cell_id, p) for p in patterns)]


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
    """The main job: the default model on every installed engine, concurrency 1 and 8, short prompts, and two
    small evals so the seed table's quality columns are filled: ARC-Easy (loglikelihood on engines with prompt
    logprobs, else generation) on 200 documents and GSM8K on 50."""
    installed = tuple(name for name in backends.names() if backends.availability(name) is None)
    if not installed:
        raise BackendError("no backend is installed; run: pip install 'servebench[transformers]'")
    return Matrix(
        name="default",
        models=(registry.default,),
        backends=installed,
        scenarios=(LoadScenario(),
                   EvalScenario(name="arc-easy", task="arc-easy", limit=200),
                   EvalScenario(name="gsm8k", task="math-absdiff", limit=50)),
        native_variants=True,
    )
