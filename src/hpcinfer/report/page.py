"""What a report page is made of: sections holding a plain-language reading, tables and plots.

The section builders produce these plain values from result documents; the HTML template only
lays them out. Keeping the numbers out of the template keeps every figure testable without
parsing HTML.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcinfer.errors import InputError


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells; `note` says how to read it (units, origins).
    Columns other than `text_columns` hold figures (right-aligned)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    text_columns: tuple[int, ...] = (0,)
    kind: Literal["table"] = "table"


@dataclass(frozen=True)
class Plot:
    """A PNG plot, embedded in the page as a data URI so the page stands alone."""

    title: str
    png: bytes
    alt: str
    width: int
    height: int
    kind: Literal["plot"] = "plot"

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Section:
    """One result file's part of the page."""

    kind: str
    title: str
    source: str
    reading: tuple[str, ...]
    blocks: tuple[Table | Plot, ...]


def malformed(path: Path, where: str, expected: str, found: Any) -> InputError:
    """The error for a result file whose structure is wrong, naming the file and the field."""
    kind = "null" if found is None else type(found).__name__
    return InputError(
        f"{path}: {where} must be {expected}, found {kind}; the file is not a result of "
        "`hpcinfer bench` (or was edited): rerun the benchmark to write it again"
    )
