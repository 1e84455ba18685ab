"""CLI command `hpcinfer profile card RUN_DIR`: the run's CCL-Bench workload card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hpcinfer.cli import flags

CARD_EPILOG = (
    "Example: hpcinfer profile card experiments/E1.2_llama8b_tp2 writes "
    "experiments/E1.2_llama8b_tp2/workload_card.yaml. The device count is dp_replicate x "
    "dp_shard x cp x tp x pp (EP is not multiplied in) and must match the "
    "kineto_trace_<rank> files in the folder. Exit codes: 0 written (the path is printed); "
    "2 not a run folder, profile.json unreadable, or a rank's trace missing (named)."
)


@flags.takes(
    "out",
    *flags.OUTPUT_MODE,
    helps={"out": "Folder for workload_card.yaml, created if missing (default: the run folder)."},
)
def card(
    run_dir: Annotated[
        Path,
        typer.Argument(metavar="RUN_DIR", help="A run folder of `hpcinfer profile run`."),
    ],
    *,
    flags: flags.Flags,
) -> None:
    """Write the CCL-Bench workload card (workload_card.yaml) of a profiled run: model,
    data, hardware, parallel plan, versions and trace sources, from its profile.json
    (into OUT with -o; default: the run folder)."""
    from hpcinfer.profile.card import write_card

    out = flags["out"]
    path = write_card(run_dir, Path(out) if out else None)
    if flags.json_out:
        print(json.dumps({"card": str(path)}))
    elif not flags.quiet:
        print(path)


def register(group: typer.Typer) -> None:
    """Add `card` to the `hpcinfer profile` group."""
    group.command(epilog=CARD_EPILOG)(card)
