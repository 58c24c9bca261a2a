"""Where ``bench train`` and ``bench quantize`` put what they make, and how they register it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from backends.checkpoints import ModelEntry, Registry, RegistryError, append_entry, hub_entry, load_registry
from backends.paths import cache_dir


class ArtifactError(RuntimeError):
    """An output cannot be written or registered; the message says what to change."""


def default_output_dir(kind: str, name: str) -> Path:
    """``{cache}/models/<kind>/<name>`` (kind is ``trained`` or ``quantized``)."""
    return cache_dir() / "models" / kind / name


def registry_path_text(path: Path) -> str:
    """``path`` as models.yaml should store it: under the cache as ``{cache}/...``, else absolute."""
    path = path.resolve()
    try:
        return "{cache}/" + str(path.relative_to(cache_dir().resolve()))
    except ValueError:
        return str(path)


def check_new_name(registry: Registry, name: str) -> None:
    """Fail before any work if ``name`` is already registered."""
    if any(m.name == name for m in registry.models):
        raise ArtifactError(f"model {name!r} already exists in {registry.source}; pick another with --name")


def fresh_dir(path: Path) -> Path:
    """An empty output folder; a leftover from an interrupted run (not registered) is replaced."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def register(registry_file: Path | None, *, name: str, fmt: str, path: Path, derived_from: str,
             recipe: dict[str, Any], description: str, tokenizer: str | None = None) -> ModelEntry:
    """Append the entry for a finished artifact to models.yaml and return it."""
    entry = ModelEntry(name=name, format=fmt, path=registry_path_text(path),  # type: ignore[arg-type]
                       derived_from=derived_from, recipe=recipe, description=description, tokenizer=tokenizer)
    try:
        append_entry(entry, registry_file)
    except RegistryError as exc:
        raise ArtifactError(str(exc)) from exc
    return entry


def hf_source(registry_file: Path | None, model: str) -> tuple[Registry, Path]:
    """The registry and the HF checkpoint folder of ``model``; other formats are refused with advice.

    ``model`` may be a Hugging Face repo id that models.yaml lacks: its ``hub:`` entry is added first, so the
    entry written for the new checkpoint can name it in ``derived_from``.
    """
    try:
        registry = load_registry(registry_file)
        if registry.with_model(model) is not registry:
            registry = append_entry(hub_entry(model), registry.source)
        path, fmt = registry.checkpoint(model)
        if fmt != "hf":
            hf = [m.name for m in registry.derived(model) if m.format == "hf"]
            hint = f" Use {hf[0]!r}." if hf else ""
            raise ArtifactError(f"model {model!r} is {fmt}; this needs an HF checkpoint.{hint}")
        return registry, path
    except RegistryError as exc:
        raise ArtifactError(str(exc)) from exc
