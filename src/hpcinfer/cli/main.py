"""The `hpcinfer` command: thin Typer commands that build a validated spec and call the library.

Nothing heavy is imported at module level, so `hpcinfer --help` is instant.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.core.stop import STOP_SIGNALS
from hpcinfer.core.terminal import unclipped, wide_console
from hpcinfer.errors import HpcinferError, SpecError
from hpcinfer.exitcodes import ExitCode

app = typer.Typer(
    name="hpcinfer",
    help="LLM batch inference, server fleets, benchmarks and profiling on HPC machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: wrapped to the terminal (or 80 columns), never cut; rich's option panels cut
    # option names and values with an ellipsis in a narrow terminal or a pipe.
    rich_markup_mode=None,
)
err = wide_console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from hpcinfer import __version__

        print(f"hpcinfer {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """LLM batch inference, server fleets, benchmarks and profiling on HPC machines."""


RUN_EPILOG = (
    "Exit codes: 0 all records ok; 3 finished, some records are error rows; "
    "4 incomplete (signal or --time-limit): rerun the same command to resume; "
    "1 the run failed (see the worker log or unreachable host named); "
    "2 bad spec, flags or input paths."
)


@app.command(epilog=RUN_EPILOG)
@flags.takes(*flags.RUN, "hostfile")
def run(
    args: flags.SPEC_AND_INPUTS = None,
    restart: Annotated[
        bool, typer.Option(help="Discard results of a different spec in --out.")
    ] = False,
    save_spec: Annotated[
        Path | None,
        typer.Option(
            "--save-spec",
            metavar="FILE.yaml",
            help="Write this command line's job as a spec file and exit (runs nothing): "
            "`hpcinfer run FILE.yaml` and `hpcinfer submit FILE.yaml` then do what it does.",
        ),
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Run batch inference over prompt files; rerun the same command to resume.

    Across nodes: `hpcinfer run spec.yaml --launcher mpi` inside a PBS/Slurm job (or
    `mpiexec -n 48 -ppn 12 hpcinfer run spec.yaml --launcher mpi`) makes every rank a worker
    of one job, balanced dynamically; rank 0 coordinates and prints the summary.
    On a Ray cluster (`hpcinfer ray up`): `--launcher ray [--ray-cluster FILE]` runs one
    worker per device group as Ray actors; this process coordinates.

    On servers: `--engine openai --endpoints endpoints.json` (from `hpcinfer serve`) or
    `--url http://HOST:PORT` dispatches to running OpenAI-compatible servers;
    `--engine vllm-server --servers 2` starts a fleet for this job and stops it after.
    """
    from hpcinfer.core.spec_loading import load_job_spec, split_spec_and_inputs
    from hpcinfer.core.stop import StopSignal, signals_feed
    from hpcinfer.engines.kinds import kind_of
    from hpcinfer.run.job import RunOptions, run_job

    spec_file, inputs = split_spec_and_inputs(args or [])
    spec = load_job_spec(spec_file, inputs, flags.spec_fields(), flags.sets)
    quiet, json_out = flags.quiet, flags.json_out
    if save_spec is not None:
        from hpcinfer.core.spec_loading import save_job_spec

        written = save_job_spec(spec, save_spec)
        if not quiet:
            err.print(f"saved the job as {escape(str(written))}; run it with: hpcinfer run "
                      f"{escape(str(save_spec))}", highlight=False)  # fmt: skip
        raise typer.Exit(0)
    stop_request = StopSignal()
    options = RunOptions(
        restart=restart,
        retry_errors=bool(flags["retry_errors"]),
        quiet=quiet or json_out,
        stop=stop_request,
        on_note=None if quiet or json_out else _note,
    )
    ctx = None
    # A one-shot fleet runs its dispatcher here and starts one serve rank per node itself;
    # on a Ray cluster this process is the coordinator and the workers are Ray actors.
    ranks = spec.workers.launcher not in ("local", "ray")
    if ranks and not kind_of(spec).runs_once:
        ctx = _rank_context(spec, flags["hostfile"])
        if ctx.info.rank != 0:
            from hpcinfer.run.agent import serve_rank

            raise typer.Exit(serve_rank(spec, options, ctx))
    # First SIGINT/SIGTERM: drain (finish and keep what is in flight); second: abort.
    with signals_feed(stop_request):
        summary = run_job(spec, options, ctx)
    if json_out:
        print(json.dumps(summary.as_dict(), indent=1))
    elif not quiet:
        _print_summary(summary)
    raise typer.Exit(int(summary.exit_code))


def _note(text: str) -> None:
    err.print(escape(text), highlight=False)


def _rank_context(spec: Any, hostfile: Path | None) -> Any:
    """This process's rank; outside any rank, start the ranks and exit with rank 0's code."""
    from hpcinfer.run.ranks import RankContext, current_rank

    info = current_rank(spec.workers.launcher)
    if info is not None:
        return RankContext(info, spec.workers.launcher)
    if sys.argv[1:2] != ["run"]:
        raise SpecError("--launcher starts ranks from the `hpcinfer run ...` command line only")
    from hpcinfer.core.stop import StopSignal, signals_feed
    from hpcinfer.run.selflaunch import self_launch

    with signals_feed(StopSignal()) as stop:
        code = self_launch(spec, spec.workers.launcher, sys.argv[1:], hostfile, stop)
    raise typer.Exit(code)


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    from hpcinfer.run.figures import FIGURE_DEFINITIONS

    table = Table(title=f"hpcinfer run: {summary.status}", show_header=False)
    table.add_row(
        "records",
        f"{summary.records_ok} ok, {summary.records_failed} failed of {summary.records_total}",
    )
    table.add_row(
        "this run",
        f"{summary.records_this_run} records" + (" (resumed)" if summary.resumed else ""),
    )
    table.add_row("tokens", f"{summary.prompt_tokens} in, {summary.output_tokens} out")
    defined = FIGURE_DEFINITIONS
    table.add_row("output tok/s", f"{summary.output_tokens_per_s:.0f} ({defined['output tok/s']})")
    generation = "-" if summary.generation_s is None else f"{summary.generation_s:.1f} s"
    table.add_row("generation time", f"{generation} ({defined['generation time']})")
    table.add_row("wall time", f"{summary.wall_s:.1f} s ({defined['wall time']})")
    for endpoint_url, count in summary.endpoints.items():
        table.add_row(f"endpoint {endpoint_url}", f"{count} records")
    for w in summary.workers:
        where = f" (rank {w.rank} on {w.host})" if w.host else ""
        table.add_row(
            f"worker {w.worker}{where}",
            f"{w.records} records, {w.units} units "
            + (f"on {','.join(w.devices)}" if w.devices else "dispatched"),
        )
    table.add_row("results", f"{summary.out_dir}/results.jsonl")
    err.print(unclipped(table))
    if summary.message:
        err.print(summary.message)


@app.command()
@flags.takes(*flags.OUTPUT_MODE)
def plan(
    profile: Annotated[
        str | None, typer.Option(help="Hardware profile name or YAML (default: detect).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Workers (default: one per device group).")
    ] = None,
    tp: Annotated[int, typer.Option("--tp", help="Devices per worker (tensor parallel).")] = 1,
    placement: Annotated[str, typer.Option(help="compact or scatter.")] = "compact",
    *,
    flags: flags.Flags,
) -> None:
    """Show which devices each worker gets, with its binding environment, and idle devices."""
    from rich.table import Table

    from hpcinfer.cluster import plan_placement, resolve_profile

    if placement not in ("compact", "scatter"):
        raise SpecError(f"--placement {placement!r}: choose compact or scatter")
    hw = resolve_profile(profile)
    result = plan_placement(hw, workers=workers, tp=tp, mode=placement)  # type: ignore[arg-type]
    rows = result.table_rows()
    if flags.json_out:
        print(json.dumps({"profile": hw.name, "rows": rows, "warnings": result.warnings}, indent=1))
        return
    table = Table(title=f"{hw.name}: {hw.devices_per_node} devices, TP={tp}, {placement}")
    for column in rows[0] if rows else ["worker"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    wide_console().print(unclipped(table))
    for warning in [] if flags.quiet else result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
@flags.takes(*flags.OUTPUT_MODE)
def spec(
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the JSON Schema of the job spec.")
    ] = False,
    check: Annotated[
        Path | None, typer.Option(help="Validate a spec file and print it with defaults.")
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Print the job spec's JSON Schema, or validate a spec file (always JSON; with --quiet
    --check prints nothing: the exit code says whether the file is valid)."""
    from hpcinfer.spec import JobSpec, build_spec, load_spec_file, spec_json_schema

    if schema:
        print(json.dumps(spec_json_schema(), indent=1))
    elif check is not None:
        validated = build_spec(load_spec_file(check), str(check))
        if flags.quiet:
            return
        print(json.dumps(validated.model_dump(mode="json"), indent=1))
    else:
        print(json.dumps(JobSpec().model_dump(mode="json"), indent=1))


def _register_commands() -> None:
    """Commands that live in their own modules (each imports nothing heavy at module level)."""
    from hpcinfer.cli import (
        bench_cmds,
        cluster_cmds,
        profile_cmds,
        ray_cmds,
        serve_cmds,
        stage_cmds,
        submit_cmds,
    )

    submit_cmds.register(app)
    stage_cmds.register(app)
    serve_cmds.register(app)
    bench_cmds.register(app)
    profile_cmds.register(app)
    ray_cmds.register(app)
    cluster_cmds.register(app)


_register_commands()


def main() -> None:
    """Run one command as the console script does (tests call this in-process): errors
    hpcinfer raises on purpose print without a traceback, and a Ctrl-C is exit 4
    (incomplete) wherever it lands in the command."""
    try:
        _main()
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INCOMPLETE))


def console() -> None:
    """The installed `hpcinfer` command: `main`, and once its exit code is decided a Ctrl-C
    or SIGTERM during interpreter shutdown is exit 4 too. A KeyboardInterrupt escaping `main`
    there, or a signal after Python's finalization has set the handlers back to the
    default, gave exit -2 when a second Ctrl-C raced the end of a stopped run."""
    try:
        main()
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _leave_incomplete)
        # atexit runs the last registered first: from here on (other exit handlers, then the
        # finalization that resets Python-level handlers) a stop signal is ignored.
        atexit.register(_ignore_stop_signals)


def _leave_incomplete(_signum: int, _frame: FrameType | None) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream mid-write or closed: exit regardless
            stream.flush()
    os._exit(int(ExitCode.INCOMPLETE))


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _main() -> None:
    from typer.main import get_command

    from hpcinfer.cli.metavars import clean_metavars

    try:
        # as app() runs it, with clean metavars in --help; returns a typer.Exit's code
        code = clean_metavars(get_command(app))(standalone_mode=False)
    except HpcinferError as exc:
        err.print("[bold red]error:[/bold red]", escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INCOMPLETE))
    except Exception as exc:
        # Usage errors (unknown flag, bad value) come from the click that typer bundles.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    console()
