"""CLI commands `hpcinfer serve` and `hpcinfer endpoints` (registered on the app by `register`).

Thin: flags -> a validated JobSpec -> one call into hpcinfer.serve. Nothing heavy at module
level (the serve package is imported when a command runs), so `hpcinfer --help` stays
instant; vLLM itself is never imported by hpcinfer here, only by the servers it starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

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
    "`hpcinfer serve & hpcinfer endpoints endpoints.json --wait 900 && hpcinfer run ...`."
)

# CLI flag -> dotted spec field. Flags left unset do not override the spec file.
_SERVE_FLAGS = {
    "model": "model",
    "servers": "serve.servers",
    "tp": "engine.tensor_parallel_size",
    "profile": "workers.profile",
    "host": "serve.host",
    "port": "serve.port",
    "registry": "serve.registry",
    "api_key_env": "serve.api_key_env",
    "ready_timeout": "serve.ready_timeout_s",
    "time_limit": "time_limit",
    "launcher": "workers.launcher",
    "log_dir": "serve.log_dir",
}


def build_serve_spec(
    spec_file: str | None, overrides: dict[str, Any], sets: list[str], cwd: Path
) -> Any:
    """Spec file (paths in it relative to it, as for `run`) + flags + --set, validated."""
    from hpcinfer.core.spec_loading import is_spec_file, load_job_spec

    if spec_file is not None and not is_spec_file(spec_file):
        raise SpecError(
            f"`hpcinfer serve` takes a spec file (.yaml/.yml), not {spec_file!r}; the model "
            "goes in --model"
        )
    fields = {_SERVE_FLAGS[name]: value for name, value in overrides.items()}
    return load_job_spec(spec_file, (), fields, sets, cwd)


def serve(
    spec_file: Annotated[
        str | None, typer.Argument(metavar="SPEC.yaml", help="Job spec (optional).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model directory or HF id in HF_HOME (default: built-in tiny model)."),
    ] = None,
    servers: Annotated[
        int | None,
        typer.Option(help="Servers per node (default: one per GPU or tile; one on CPU)."),
    ] = None,
    tp: Annotated[
        int | None, typer.Option("--tp", help="Tensor-parallel devices per server.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Hardware profile name or YAML (default: detect).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind (default 127.0.0.1; 0.0.0.0 for other nodes)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="First port (default 8000); server i gets port + i.")
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="Endpoints registry to write (default endpoints.json).")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Require an API key: the NAME of the environment variable holding it."),
    ] = None,
    ready_timeout: Annotated[
        float | None, typer.Option(help="Seconds a server may take to become ready (900).")
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(help="Stop the servers after e.g. 45m, 2h (default: the job's walltime)."),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(help="local (default), or one serve rank per node: mpi, srun, ssh."),
    ] = None,
    log_dir: Annotated[
        str | None, typer.Option(help="Server logs (default: serve-logs/ beside the registry).")
    ] = None,
    hostfile: Annotated[
        Path | None,
        typer.Option(help="Hosts for --launcher mpi/ssh outside PBS/Slurm (one per line)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any spec field: --set engine.max_model_len=4096."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the endpoints as JSON on stdout once ready.")
    ] = False,
) -> None:
    """Start vLLM OpenAI-compatible servers and keep an endpoints registry of them.

    Servers run until SIGTERM, Ctrl-C or the time limit; their states (starting, ready,
    unhealthy, dead, failed, stopped) are written to the registry as they change."""
    from hpcinfer.serve.node import ServeOptions, serve_node

    overrides = {k: v for k, v in locals().items() if k in _SERVE_FLAGS}
    spec = build_serve_spec(spec_file, overrides, set_ or [], Path.cwd())
    rank = None
    if spec.workers.launcher != "local":
        from hpcinfer.run.ranks import current_rank

        rank = current_rank(spec.workers.launcher)
        if rank is None:
            if sys.argv[1:2] != ["serve"]:
                raise SpecError("--launcher starts ranks from the `hpcinfer serve ...` line only")
            from hpcinfer.serve.launch import launch_serve_ranks

            code = launch_serve_ranks(spec, spec.workers.launcher, sys.argv[1:], hostfile)
            raise typer.Exit(code)
    from hpcinfer.core.stop import signals_feed

    def announce(document: Any) -> None:
        print(json.dumps(document.model_dump()), flush=True)

    options = ServeOptions(cwd=Path.cwd(), on_ready=announce if json_out else None)
    with signals_feed(options.stop):
        serve_node(spec, options, rank)
    raise typer.Exit(0)


def _client_key(api_key_env: str | None) -> str | None:
    """The key to send: --api-key-env's variable (which must be set), else OPENAI_API_KEY."""
    if api_key_env is None:
        return os.environ.get("OPENAI_API_KEY") or None
    value = os.environ.get(api_key_env)
    if not value:
        raise SpecError(f"--api-key-env {api_key_env}: ${api_key_env} is not set (or empty)")
    return value


def endpoints(
    registry: Annotated[
        str | None,
        typer.Argument(metavar="REGISTRY", help="endpoints.json (default, unless --url is given)."),
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option("--url", help="Check this server too (repeatable).")
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(help="Wait up to SECONDS until every endpoint is ready and up."),
    ] = None,
    expect: Annotated[
        int | None,
        typer.Option(help="With --wait: also wait until at least this many are listed."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Variable holding the API key (default: $OPENAI_API_KEY if set)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per check request.")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the registry's endpoints and check each now (GET /health, /v1/models)."""
    from hpcinfer.serve.checks import check_all, summary_line, targets, wait_until_up

    urls = url or []
    path = Path(registry) if registry else (None if urls else Path("endpoints.json"))
    key = _client_key(api_key_env)
    if wait is not None:

        def progress(problem: str) -> None:
            if not json_out:
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
    else:
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
