"""CLI commands for `hpcinfer stage` (registered on the app by `register`).

Nothing heavy at module level: the stage package (and mpi4py, only under a launcher) is
imported when the command runs, so `hpcinfer --help` stays instant.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

STAGE_EPILOG = (
    "Run one rank per node: `mpiexec -ppn 1 hpcinfer stage M --to /tmp` or "
    "`srun --ntasks-per-node=1 hpcinfer stage M --to /tmp`; alone, it copies on this node. "
    "Exit codes: 0 every copy verified; 1 staging failed (every rank exits 1; rerun to "
    "finish); 2 bad model, --to or options."
)


def stage(
    model: Annotated[
        str, typer.Argument(help="Model directory, or Hugging Face id in your HF cache.")
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Node-local folder for the copy, e.g. /tmp or /local/scratch. {rank}, {node} "
            "and {hostname} are filled in per rank (for tests or shared scratch).",
        ),
    ],
    chunk_mib: Annotated[
        int, typer.Option(help="Broadcast chunk size in MiB (buffers: 3-4 chunks per rank).")
    ] = 64,
    force: Annotated[
        bool, typer.Option(help="Send everything again, even to copies already verified.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout (rank 0).")
    ] = False,
) -> None:
    """Copy a model to every node's local disk: read once, broadcast, verify; then print the
    --model and environment that make `hpcinfer run` read the copy."""
    from hpcinfer.stage.report import ProgressPrinter
    from hpcinfer.stage.stage import StageRequest, stage_model

    progress = None if quiet or json_out else ProgressPrinter()
    request = StageRequest(model=model, to=to, chunk_mib=chunk_mib, force=force)
    result = stage_model(request, progress=progress)
    if result.rank != 0:
        return
    if json_out:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(result.text())


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `hpcinfer` app."""
    app.command(epilog=STAGE_EPILOG)(stage)
