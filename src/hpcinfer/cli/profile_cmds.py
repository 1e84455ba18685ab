"""CLI group `hpcinfer profile`: experiment grids, profiled runs, batch scripts, trace
analysis, workload cards and scaling summaries.

Each subcommand lives in its own module (`profile_<name>_cmd.py`) and registers itself on
the group. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import typer

PROFILE_HELP = (
    "Parallelism profiling: `grid` writes one config per experiment, `run` profiles every "
    "rank, `submit` writes batch job scripts, `analyze` reads the traces, `card` writes the "
    "CCL-Bench workload card, `summary` compares experiments."
)


def register(app: typer.Typer) -> None:
    """Add `profile` (with its subcommands) to the main app."""
    profile = typer.Typer(help=PROFILE_HELP, no_args_is_help=True, add_completion=False)
    # each subcommand module adds itself here: `from hpcinfer.cli import profile_x_cmd`
    # then `profile_x_cmd.register(profile)`
    from hpcinfer.cli import (
        profile_analyze_cmd,
        profile_card_cmd,
        profile_grid_cmd,
        profile_run_cmd,
        profile_submit_cmd,
        profile_summary_cmd,
    )

    profile_grid_cmd.register(profile)
    profile_run_cmd.register(profile)
    profile_submit_cmd.register(profile)
    profile_card_cmd.register(profile)
    profile_summary_cmd.register(profile)
    profile_analyze_cmd.register(profile)
    app.add_typer(profile, name="profile")
