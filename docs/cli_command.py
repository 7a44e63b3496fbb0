"""The ``dnmf`` command as a click object, for the mkdocs-click reference page.

A typer app is a click command (``typer.main.get_command``), but typer >= 0.24 builds it on its
own vendored copy of click, whose classes mkdocs-click does not recognise (it checks
``isinstance(param, click.Option)``). :func:`as_click` rebuilds the same tree — every command,
argument and option with its declarations, help, type, default and flags — from click's
classes, so the reference still comes from the options the command parses.
"""

from __future__ import annotations

import enum
import typing
from pathlib import Path
from typing import Any

import click
import typer.main

from dnmf.cli import app


class _TypeName(click.ParamType):
    """A parameter type that only carries the name the reference shows."""

    def __init__(self, name: str) -> None:
        self.name = name


_NAMES = {int: "integer", float: "float", str: "text", Path: "path", bool: "boolean"}


def _type(param: Any) -> click.ParamType:
    annotation = param.type_descriptor.annotation
    kinds = [k for k in typing.get_args(annotation) if k is not type(None)] or [annotation]
    kind = kinds[0]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return click.Choice([str(member.value) for member in kind])
    return _TypeName(_NAMES.get(kind, getattr(kind, "__name__", "text")))


def _default(value: Any) -> Any:
    return getattr(value, "value", value) if not callable(value) else None


def _param(param: Any) -> click.Parameter:
    if param.param_type_name == "argument":  # help of arguments is in the command's help
        return click.Argument([param.name], required=param.required, nargs=param.nargs,
                              type=_type(param), metavar=param.name.upper())
    decls = list(param.opts)
    if param.secondary_opts:  # --flag/--no-flag
        decls[0] = f"{decls[0]}/{'/'.join(param.secondary_opts)}"
    # a "|" in a help text would split the reference's table row
    text = param.help.replace("|", "&#x7C;") if param.help else param.help
    return click.Option(decls, help=text, type=None if param.is_flag else _type(param),
                        default=_default(param.default), show_default=param.show_default,
                        is_flag=param.is_flag or None, multiple=param.multiple,
                        required=param.required, hidden=param.hidden, count=param.count)


def as_click(command: Any) -> click.Command:
    """``command`` (typer's click) rebuilt from click's own classes."""
    params = [_param(p) for p in command.params]
    common = {"help": command.help, "short_help": command.short_help, "hidden": command.hidden}
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return click.Command(command.name, params=params, **common)
    return click.Group(command.name, params=params,
                       commands={name: as_click(sub) for name, sub in subcommands.items()},
                       **common)


_typer_command = typer.main.get_command(app)
# typer < 0.24 builds on click itself: nothing to rebuild
command = (_typer_command if isinstance(_typer_command, click.Command)
           else as_click(_typer_command))
