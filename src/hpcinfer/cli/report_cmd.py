"""CLI command `hpcinfer report DIR`: a benchmark's results as one self-contained HTML page.

Thin: arguments -> `hpcinfer.report.write_report`. The report package (and matplotlib, which
it imports only when drawing) loads when the command runs, so `hpcinfer --help` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

REPORT_EPILOG = (
    "Example: `hpcinfer report bench-out --out sweep.html`, where bench-out is the --out "
    "directory of `hpcinfer bench serve|offline|fom`; open the page in any browser (it needs "
    "no network). A section per file found (serve.json, offline.json, fom.json). Exit codes: 0 "
    "written (the path is printed); 2 DIR missing, no result file in it, or a file that is not "
    "a readable result (named)."
)


def report(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="A benchmark's --out directory (holds serve/offline/fom.json)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="HTML file to write (default: DIR/report.html)."),
    ] = None,
) -> None:
    """Render benchmark results as one HTML page: readings, tables and plots."""
    from hpcinfer.report import write_report

    print(write_report(directory, out))


def register(app: typer.Typer) -> None:
    """Add `report` to the `hpcinfer` app."""
    app.command(epilog=REPORT_EPILOG)(report)
