"""Tables and consoles that never cut a value short.

rich sizes its output to the terminal, and to 80 columns into a pipe or a batch job's log,
cutting what does not fit with an ellipsis: `ZE_AFFINITY_MASK=0.0,0.1,1.…`, a result path,
a URL. Into a pipe or file, consoles here are wide; on a narrow terminal, tables fold a long
value onto more lines instead of cutting it.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 160
"""Columns of output that goes to a pipe or file (no terminal says how wide it is)."""


def wide_console(stderr: bool = False) -> Console:
    """A terminal's own width; PIPE_WIDTH columns into a pipe or file."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


def unclipped(table: Table) -> Table:
    """`table` with every column folding a value too long for it, never cutting it."""
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    return table
