"""Read a YAML file into a pydantic model, with errors that name the offending key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config file is missing, is not YAML, or does not validate."""


def describe(exc: ValidationError, where: Path | str) -> str:
    """One line per problem; an unknown key is named as such."""
    lines = [f"{where} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"  unknown key {where!r}" if err["type"] == "extra_forbidden" else f"  {where}: {err['msg']}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    """Parsed YAML, or a :class:`ConfigFileError` saying what is wrong."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"{path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc


def load_model(path: Path, model: type[ModelT], extra: dict[str, Any] | None = None) -> ModelT:
    """Validate the YAML mapping in ``path`` (plus ``extra`` fields) as ``model``."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a mapping")
    try:
        return model.model_validate({**data, **(extra or {})})
    except ValidationError as exc:
        raise ConfigFileError(describe(exc, path)) from None
