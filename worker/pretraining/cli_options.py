"""Command-line options generated from the hyperparameter schema, so the CLI, run-config JSON and the
REST API share one definition: names, types, defaults, ranges and help all come from the pydantic
fields. An option left out on the command line stays out of the overrides, so a ``--config`` file's
value is not silently replaced by a default.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["option_name", "schema_options", "schema_overrides"]


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _range_text(info: FieldInfo) -> str:
    bounds = []
    for meta in info.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{symbol}{value}")
    return f" Range: {', '.join(bounds)}." if bounds else ""


def _switch_choices(annotation: Any) -> tuple[str, ...] | None:
    """``bool | Literal["auto"]`` -> ``("auto", "true", "false")``: a switch with named settings besides on
    and off (the schema reads the words as the bool); None for any other annotation."""
    if not (isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union):
        return None
    args = typing.get_args(annotation)
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if bool not in args or len(literals) != 1 or len(args) != 2:
        return None
    return (*(str(v) for v in typing.get_args(literals[0])), "true", "false")


def _option_declaration(name: str, info: FieldInfo) -> tuple[list[str], dict[str, Any]]:
    """The ``click.option`` arguments for one schema field."""
    kind = _base_type(info.annotation)
    flag = option_name(name)
    switch = _switch_choices(info.annotation)
    # The schema's default, in the help as click shows one; not through click's show_default, which
    # prints a text given to it in parentheses ("[default: (128)]"), the option's own default being None.
    shown = "none" if info.default is None else str(info.default).lower()
    options: dict[str, Any] = {
        "default": None,  # None = not given, so it does not override a --config value
        "help": f"{info.description or ''}{_range_text(info)}  [default: {shown}]",
    }
    if switch is not None:
        options["type"] = click.Choice(switch)
        return [flag, name], options
    if kind is bool:
        return [f"{flag}/--no-{flag[2:]}", name], options
    if typing.get_origin(kind) is Literal:
        options["type"] = click.Choice(typing.get_args(kind))
    else:
        options["type"] = {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)
    return [flag, name], options


def schema_options(model: type[BaseModel], fields: Iterable[str] | None = None) -> Callable[[Any], Any]:
    """Decorate a click command function with one option per schema field (``--max-seq-length``...),
    in schema order, like a stack of ``@click.option`` decorators."""
    names = list(fields) if fields is not None else list(model.model_fields)

    def decorate(function: Any) -> Any:
        for name in reversed(names):  # click lists decorator-added params in reverse
            declarations, options = _option_declaration(name, model.model_fields[name])
            function = click.option(*declarations, **options)(function)
        return function

    return decorate


def schema_overrides(model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """The schema fields the user actually gave on the command line."""
    return {k: v for k, v in params.items() if k in model.model_fields and v is not None}
