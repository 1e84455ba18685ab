"""CLI group `hpcinfer bench` (offline, serve, fom) and the `hpcinfer report` command.

Each benchmark's command lives in its own module and registers itself on the group, so one
benchmark's flags never crowd another's file. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import typer

BENCH_HELP = (
    "Benchmarks: `offline` (in-process vLLM, the ALCF inference FOM's throughput and FLOP form), "
    "`serve` "
    "(latency and throughput of OpenAI-compatible servers under load), `fom` (FOM1 + FOM2 + "
    "FOM3). Each writes JSON and CSV into --out; `hpcinfer report DIR` renders them as HTML."
)


def register(app: typer.Typer) -> None:
    """Add `bench` (with its subcommands) and `report` to the main app."""
    from hpcinfer.cli import bench_offline_cmd, bench_serve_cmd, report_cmd

    bench = typer.Typer(help=BENCH_HELP, no_args_is_help=True, add_completion=False)
    bench_offline_cmd.register(bench)  # offline, fom
    bench_serve_cmd.register(bench)  # serve
    app.add_typer(bench, name="bench")
    report_cmd.register(app)  # report
