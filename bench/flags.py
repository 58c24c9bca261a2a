"""Command-line flags generated from pydantic models: one declaration per option, its help and default.

A model field is the only place an option is declared (its type, default, bounds and description); a
command lists the fields it exposes and :func:`command` turns them into typer options, as llama-cpp-python's
server does from its settings. Every generated flag defaults to ``None``, meaning "not given": the model then
applies its own default, which ``--help`` shows. So a value from a ``--config`` file is overridden only by a
flag the user gave, and a default cannot drift between the CLI and the model.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

FIELDS_PARAM = "fields"


@dataclass(frozen=True)
class Flag:
    """One option of a command: where its value goes in the model's input, and the typer option."""

    path: tuple[str, ...]
    param: str
    annotation: Any
    option: Any = field(compare=False)


def flag(model: type[BaseModel], name: str, *, param: str | None = None, path: Sequence[str] = (),
         decls: Sequence[str] = (), help: str | None = None, required: bool = False, **typer_kw: Any) -> Flag:
    """The flag of ``model.name``: ``--param`` (dashed), the field's description as help, its default shown.

    ``path`` is where the value lands in the model's input (default: ``(name,)``); ``decls`` replaces the
    flag names; ``required`` makes it a required option, as is a top-level field without a default (a nested
    one, e.g. of one member of a union, is required only when its parent is chosen: the model says so).
    """
    info = model.model_fields[name]
    param = param or name
    annotation = _cli_type(info.annotation, name)
    default = info.get_default(call_default_factory=True)
    required = required or (info.is_required() and len(path) <= 1)
    dashed = "--" + param.replace("_", "-")
    if not decls:
        decls = (f"{dashed}/--no-{dashed[2:]}",) if annotation is bool else (dashed,)
    option = typer.Option(
        ... if required else None, *decls, help=help if help is not None else info.description,
        show_default=not required and _shown(default), **typer_kw,
    )
    return Flag(tuple(path) or (name,), param, annotation if required else annotation | None, option)


def model_flags(model: type[BaseModel], names: Sequence[str], *, prefix: Sequence[str] = (),
                params: Mapping[str, str] | None = None) -> list[Flag]:
    """:func:`flag` of each field in ``names``, placed under ``prefix`` (``params`` renames a flag)."""
    params = params or {}
    return [flag(model, n, param=params.get(n), path=(*prefix, n)) for n in names]


def kind_flag(union: Any, param: str, path: Sequence[str], *, kinds: Sequence[str] = (), default: str = "",
              help: str = "") -> Flag:
    """``--param``: which member of a discriminated ``union`` (each member's ``kind``) goes at ``path``.

    ``kinds`` narrows the choice; ``default`` is only shown (the command fills it in when needed).
    """
    members = get_args(_strip(union))
    values = [str(m.model_fields["kind"].default) for m in members]
    chosen = [v for v in values if not kinds or v in kinds]
    dashed = "--" + param.replace("_", "-")
    option = typer.Option(None, dashed, help=help or f"one of {', '.join(chosen)}", show_default=default or False)
    return Flag((*path, "kind"), param, choices(param, chosen) | None, option)


def nest(flags: Sequence[Flag], values: Mapping[str, Any]) -> dict[str, Any]:
    """The given flags' values (not None) as a nested dict of model input, each at its flag's path."""
    out: dict[str, Any] = {}
    for f in flags:
        value = values.get(f.param)
        if value is None:
            continue
        node = out
        for key in f.path[:-1]:
            node = node.setdefault(key, {})
        node[f.path[-1]] = value.value if isinstance(value, Enum) else value
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it (a config file under the flags): mappings are merged key by
    key, except that a mapping of another ``kind`` (another member of a union) replaces the old one."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        same = (isinstance(old, Mapping) and isinstance(value, Mapping)
                and value.get("kind", old.get("kind")) == old.get("kind"))
        merged[key] = deep_merge(old, value) if same else value  # type: ignore[arg-type]
    return merged


def command(flags: Sequence[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command whose ``fields`` parameter receives :func:`nest` of ``flags``.

    The command's other parameters stay as written; the flags are added to its signature, which is what
    typer reads.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != FIELDS_PARAM]
        generated = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=f.option,
                                       annotation=f.annotation) for f in flags]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.param: kwargs.pop(f.param, None) for f in flags}
            return func(**kwargs, fields=nest(flags, values))

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept] + generated
        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _cli_type(annotation: Any, name: str) -> Any:
    """The Python type typer should see for a field's annotation: a ``Literal`` becomes a choice (an enum)."""
    annotation = _strip(annotation)
    if get_origin(annotation) is Literal:
        return choices(name, [str(v) for v in get_args(annotation)])
    return str if annotation is SecretStr else annotation


def choices(name: str, values: Sequence[str]) -> type[StrEnum]:
    """An enum of ``values``, which typer shows and checks as a choice."""
    return StrEnum(name.title().replace("_", ""), [(v, v) for v in values])  # type: ignore[return-value]


def _strip(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]``, ``X | None`` and ``Optional[X]``."""
    if get_origin(annotation) is Annotated:
        return _strip(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _strip(rest[0])
    return annotation


def _shown(default: Any) -> str | bool:
    """What ``--help`` prints as the default (nothing for None)."""
    if default is None or default is PydanticUndefined:
        return False
    if isinstance(default, bool):
        return str(default).lower()
    return str(default.value if isinstance(default, Enum) else default)
