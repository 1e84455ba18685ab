"""CLI command `hpcinfer profile summary EXP_DIR...`: the study's CSV, plot and summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.core.terminal import wide_console

err = wide_console(stderr=True)

SUMMARY_EPILOG = (
    "Example: hpcinfer profile summary experiments/*/ -o study writes study/"
    "results_summary.csv, study/scaling.png and study/profile_summary.json; then "
    "`hpcinfer report study` shows them as a page. Exit codes: 0 written; 2 a folder is not "
    "a run folder, or its profile.json or analysis.json is unreadable (named)."
)


@flags.takes(
    "out",
    *flags.OUTPUT_MODE,
    helps={
        "out": "Folder for results_summary.csv, the scaling plot and profile_summary.json, "
        "created if missing (default: profile-summary)."
    },
)
def summary(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="EXP_DIR...", help="Run folders of `hpcinfer profile run`."),
    ],
    *,
    flags: flags.Flags,
) -> None:
    """Compare experiments: results_summary.csv (throughput, TTFT, TPOT, speedup,
    efficiency, comm overhead, exposed comm, collectives per step, straggler), the scaling
    plot and profile_summary.json, into OUT (-o; default: profile-summary)."""
    from hpcinfer.profile.summary import CSV_FILE, write_summary

    out = Path(flags["out"] or "profile-summary")
    result = write_summary(run_dirs, out)
    if flags.json_out:
        rows = [row.model_dump(mode="json") for row in result.rows]
        print(json.dumps({"out": str(out), "rows": rows}, indent=1))
        return
    print(out / CSV_FILE)
    if flags.quiet:
        return
    for row in result.rows:
        if row.note:
            err.print(f"{escape(row.experiment)}: {escape(row.note)}", highlight=False)
    err.print(
        f"{len(result.rows)} experiment(s); open the page with: hpcinfer report {escape(str(out))}",
        highlight=False,
    )


def register(group: typer.Typer) -> None:
    """Add `summary` to the `hpcinfer profile` group."""
    group.command(epilog=SUMMARY_EPILOG)(summary)
