"""CLI commands `hpcinfer serve` and `hpcinfer endpoints` (registered on the app by `register`).

Thin: flags -> a validated JobSpec -> one call into hpcinfer.serve. Nothing heavy at module
level (the serve package is imported when a command runs), so `hpcinfer --help` stays
instant; vLLM itself is never imported by hpcinfer here, only by the servers it starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcinfer.cli import flags
from hpcinfer.errors import SpecError

SERVE_EPILOG = (
    "Across nodes: `hpcinfer serve --launcher mpi --host 0.0.0.0 --api-key-env KEY_VAR` "
    "inside a PBS/Slurm job starts one serve rank per node (or run `mpiexec -ppn 1 hpcinfer "
    "serve --launcher mpi ...` yourself); rank 0 merges every node's endpoints into the "
    "registry. Exit codes: 0 stopped by SIGTERM/SIGINT or the time limit; 1 no server became "
    "ready, or every server died (log tails are printed); 2 bad spec or flags."
)
ENDPOINTS_EPILOG = (
    "Exit codes: 0 every endpoint up; 1 an endpoint is down (or, with --wait, failed or not "
    "up in time); 2 the registry is missing or unreadable. In a job script: "
    "`hpcinfer serve & hpcinfer endpoints --endpoints endpoints.json --wait 15m && hpcinfer "
    "run ...`. --quiet prints nothing: the exit code says it."
)


def build_serve_spec(
    spec_file: str | None, fields: dict[str, Any], sets: list[str], cwd: Path
) -> Any:
    """Spec file (paths in it relative to it, as for `run`) + flags' fields + --set, validated."""
    from hpcinfer.core.spec_loading import is_spec_file, load_job_spec

    if spec_file is not None and not is_spec_file(spec_file):
        raise SpecError(
            f"`hpcinfer serve` takes a spec file (.yaml/.yml), not {spec_file!r}; the model "
            "goes in --model"
        )
    return load_job_spec(spec_file, (), fields, sets, cwd)


SERVE_FLAGS = (*flags.ENGINE, *flags.SERVER, *flags.SPAN, "registry", *flags.COMMON)
_REGISTRY_ALIAS = flags.Flag(
    Annotated[str | None, typer.Option("--registry", hidden=True, help="Old name of --endpoints.")]
)


@flags.takes(*SERVE_FLAGS, fields=flags.SERVER_FIELDS, table={"registry": _REGISTRY_ALIAS})
def serve(spec_file: flags.SPEC_ONLY = None, *, flags: flags.Flags) -> None:
    """Start vLLM OpenAI-compatible servers and keep an endpoints registry of them.

    Servers run until SIGTERM, Ctrl-C or the time limit; their states (starting, ready,
    unhealthy, dead, failed, stopped) are written to the registry as they change."""
    from hpcinfer.serve.node import ServeOptions, serve_node

    fields = flags.spec_fields()
    if flags["registry"] is not None and flags["endpoints"] is None:
        fields["serve.registry"] = flags["registry"]
    spec = build_serve_spec(spec_file, fields, flags.sets, Path.cwd())
    rank = None
    if spec.workers.launcher == "ray":
        raise SpecError(
            "--launcher ray is `hpcinfer run`'s (its workers as Ray actors); serve starts one "
            "rank per node with --launcher mpi, srun or ssh"
        )
    if spec.workers.launcher != "local":
        from hpcinfer.run.ranks import current_rank

        rank = current_rank(spec.workers.launcher)
        if rank is None:
            if sys.argv[1:2] != ["serve"]:
                raise SpecError("--launcher starts ranks from the `hpcinfer serve ...` line only")
            from hpcinfer.core.stop import StopSignal, signals_feed
            from hpcinfer.serve.launch import launch_serve_ranks

            with signals_feed(StopSignal()) as stop:
                code = launch_serve_ranks(
                    spec, spec.workers.launcher, sys.argv[1:], flags["hostfile"], stop
                )
            raise typer.Exit(code)
    from hpcinfer.core.stop import signals_feed

    def announce(document: Any) -> None:
        print(json.dumps(document.model_dump()), flush=True)

    options = ServeOptions(
        cwd=Path.cwd(), on_ready=announce if flags.json_out else None, quiet=flags.quiet
    )
    with signals_feed(options.stop):
        serve_node(spec, options, rank)
    raise typer.Exit(0)


@flags.takes("endpoints", "url", "api_key_env", *flags.OUTPUT_MODE)
def endpoints(
    registry: Annotated[
        str | None,
        typer.Argument(metavar="REGISTRY", hidden=True, help="Old spelling of --endpoints."),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            parser=flags.seconds("--wait"),
            metavar="DURATION",
            help=f"Wait up to this long ({flags.DURATION_FORMS}) until every endpoint is "
            "ready and up.",
        ),
    ] = None,
    expect: Annotated[
        int | None,
        typer.Option(help="With --wait: also wait until at least this many are listed."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            parser=flags.seconds("--timeout"),
            metavar="DURATION",
            help="How long one check request may take (default 5s).",
        ),
    ] = 5.0,
    *,
    flags: flags.Flags,
) -> None:
    """List the registry's endpoints and check each now (GET /health, /v1/models)."""
    from hpcinfer.core.api_keys import resolve_api_key
    from hpcinfer.serve.checks import check_all, summary_line, targets, wait_until_up

    urls, json_out, quiet = flags["url"] or [], flags.json_out, flags.quiet
    if registry is not None and flags["endpoints"] is not None:
        raise SpecError("give the registry once: --endpoints FILE")
    registry = flags["endpoints"] or registry
    path = Path(registry) if registry else (None if urls else Path("endpoints.json"))
    key = resolve_api_key(flags["api_key_env"])
    if wait is not None:

        def progress(problem: str) -> None:
            if not (json_out or quiet):
                print(f"waiting: {problem}", file=sys.stderr, flush=True)

        statuses = wait_until_up(
            path, urls, wait, key, expect=expect, timeout_s=timeout, on_poll=progress
        )
    else:
        statuses = check_all(targets(path, urls), key, timeout)
    if json_out:
        document = {
            "registry": str(path) if path else None,
            "endpoints": [s.as_dict() for s in statuses],
            "up": sum(1 for s in statuses if s.up),
            "down": sum(1 for s in statuses if not s.up),
        }
        print(json.dumps(document, indent=1))
    elif not quiet:
        _print_table(statuses, path)
        print(summary_line(statuses) + ("" if statuses else ": the registry lists no endpoint"))
    raise typer.Exit(0 if statuses and all(s.up for s in statuses) else 1)


def _print_table(statuses: Any, path: Path | None) -> None:
    from rich.table import Table
    from rich.text import Text

    from hpcinfer.serve.report import wide_console

    table = Table(title=f"endpoints ({path})" if path else "endpoints")
    for column in ("url", "model", "node", "state", "check"):
        table.add_column(column)
    for status in statuses:
        entry = status.endpoint
        cells = (entry.url, entry.model or "-", entry.node or "-", entry.state, status.check_text())
        table.add_row(*(Text(c) for c in cells))
    wide_console().print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `hpcinfer` app."""
    app.command(epilog=SERVE_EPILOG)(serve)
    app.command(epilog=ENDPOINTS_EPILOG)(endpoints)
