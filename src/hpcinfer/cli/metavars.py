"""Clean metavars in `--help`: `N`, `NUMBER`, `TEXT`, `PATH`, never `<list[str]>` or `<bool>`.

Typer shows each option's Python type in angle brackets unless it has a metavar, and each
argument's type beside the metavar it already has. Rather than spell a metavar on every
option of every command, `clean_metavars` gives each option without one a metavar from its
type (an on/off flag none) and drops the type column of arguments, once, on the command
tree the console script runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from typer.core import TyperArgument, TyperOption

BY_TYPE: dict[Any, str] = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}
"""The metavar of a value of each type (a repeatable option's help says it repeats)."""


def metavar_for(annotation: Any) -> str:
    """The metavar of one option's value type: `int` N, `list[str]` TEXT, other TEXT."""
    args = get_args(annotation)
    if args and getattr(annotation, "__origin__", None) is list:
        return metavar_for(args[0])
    return BY_TYPE.get(annotation, "TEXT")


def clean_metavars(command: Any) -> Any:
    """Give every option of `command` and its subcommands a clean metavar; returns it."""
    for param in command.params:
        if isinstance(param, TyperOption) and param.metavar is None:
            flag = param.is_flag or param.is_bool_flag or param.count
            param.metavar = "" if flag else metavar_for(param.type_descriptor.annotation)
        elif isinstance(param, TyperArgument):
            # The argument's name column shows its metavar already; no type beside it.
            param.display_type_rich = _no_type  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        clean_metavars(sub)
    return command


def _no_type(ctx: Any) -> None:
    return None
