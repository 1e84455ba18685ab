"""CLI command `hpcinfer report DIR`: a benchmark's results as one self-contained HTML page.

Thin: arguments -> `hpcinfer.report.write_report`. The report package (and matplotlib, which
it imports only when drawing) loads when the command runs, so `hpcinfer --help` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hpcinfer.cli import flags

REPORT_EPILOG = (
    "Example: `hpcinfer report bench-out -o pages` writes pages/report.html, where bench-out "
    "is the --out "
    "directory of `hpcinfer bench serve|offline|fom`; open the page in any browser (it needs "
    "no network). A section per file found (serve.json, offline.json, fom.json, and "
    "profile_summary.json from `hpcinfer profile summary -o DIR`). Exit codes: 0 "
    "written (the path is printed); 2 DIR missing, no result file in it, or a file that is not "
    "a readable result (named)."
)


@flags.takes("out", *flags.OUTPUT_MODE)
def report(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="A benchmark's --out directory (holds serve/offline/fom.json), or the -o "
            "directory of `hpcinfer profile summary`.",
        ),
    ],
    *,
    flags: flags.Flags,
) -> None:
    """Render benchmark results as one HTML page: readings, tables and plots.

    The page goes to OUT/report.html (-o OUT; default: DIR/report.html)."""
    from hpcinfer.report import write_report
    from hpcinfer.report.html import DEFAULT_NAME

    out = flags["out"]
    # -o is a directory, as everywhere; an .html name is the page itself (the old spelling).
    target = (
        None if out is None else Path(out) if out.endswith(".html") else Path(out) / DEFAULT_NAME
    )
    page = write_report(directory, target)
    if flags.json_out:
        print(json.dumps({"report": str(page)}))
    elif not flags.quiet:
        print(page)


def register(app: typer.Typer) -> None:
    """Add `report` to the `hpcinfer` app."""
    app.command(epilog=REPORT_EPILOG)(report)
