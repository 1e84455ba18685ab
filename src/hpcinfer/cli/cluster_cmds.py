"""CLI group `hpcinfer cluster`: a cluster of one's own, from its versioned cluster file.

Thin: a file (NAME@VERSION of a shipped one, or a path) -> `hpcinfer.provision`; nothing
heavy at module level, so `hpcinfer --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hpcinfer.cli import flags

CLUSTER_HELP = (
    "A cluster of your own (a control node and compute nodes, configured with Ansible over "
    "ssh), described by one versioned cluster file: `inventory` renders the Ansible inventory "
    "and group variables from it, `doc` describes the cluster; `sync` copies your project to "
    "the control node, `configure` and `verify` run Ansible there, `control CMD` and `compute "
    "CMD` run a command there or on every compute node, `status` shows the nodes, versions, "
    "Ray and servers. Started off the control node (a laptop), a command forwards itself to "
    "it over ssh ($HPCINFER_SSH: the ssh command and options, default ssh)."
)
FILE_HELP = (
    "The cluster file: a shipped one as NAME@VERSION (a770-cluster@0.1, ryzen-ai-cluster@0.2) "
    "or the path to your own YAML file."
)
INVENTORY_EPILOG = (
    "Example: `hpcinfer cluster inventory a770-cluster@0.1 --out ansible/inventory` writes "
    "inventory.yml (groups control and compute) and group_vars/{all,control,compute}.yml; "
    "without --out they are printed. Exit codes: 0 rendered; 2 the cluster file is invalid "
    "(the file, field and fix are named)."
)
DOC_EPILOG = "Exit codes: 0 described; 2 the cluster file is invalid."
CLUSTER_ENV = "HPCINFER_CLUSTER"
DEFAULT_CLUSTER_FILE = "cluster.yaml"
SYNC_EPILOG = (
    "Example, on a laptop in the project folder: `hpcinfer cluster sync -c cluster.yaml` "
    "copies it (rsync over ssh, deleting there what was deleted here) into the control "
    "node's control.workdir (default ~/hpcinfer), skipping virtual environments (any folder "
    "holding pyvenv.cfg), run outputs (any folder holding run.json; out/, outputs/, runs/), "
    "caches and .git; each copied file is listed. It mirrors only into a folder it made "
    "(marked .hpcinfer-workdir): an existing non-empty folder without the mark is refused, "
    "nothing copied or deleted. Exit codes: 0 copied; 1 rsync or ssh failed; 2 bad input or "
    "a refused workdir."
)
PLAYBOOK_EXIT = (
    "Ansible's output is the progress on stderr (--quiet: none), also logged in "
    "~/.hpcinfer/clusters/NAME/logs/ on the control node. Exit codes: 0 every host ok; 1 a "
    "host failed or was unreachable (each named, with the failed task); 2 bad input."
)
CONFIGURE_EPILOG = (
    "Example: `hpcinfer cluster configure -c cluster.yaml --limit compute0` (Python env, vLLM, "
    "Ray, the /etc/hosts clean-up, the server), `--check` for a dry run. Runs on the control "
    "node: from elsewhere the cluster file is copied there and hpcinfer installed into its "
    "venv first. " + PLAYBOOK_EXIT
)
VERIFY_EPILOG = (
    "Example: `hpcinfer cluster verify -c cluster.yaml`: vLLM answers the fixed prompt at "
    "temperature 0 with the recorded answer on every compute node, the Ray cluster has "
    "exactly the file's nodes and devices, the server answers. It always checks the whole "
    "cluster (the checks compare the nodes with each other), so it takes no --limit. "
    + PLAYBOOK_EXIT
)
COMPUTE_EPILOG = (
    "Example: `hpcinfer cluster compute -c cluster.yaml 'hostname'` prints each compute "
    "node's output, each line prefixed with its name, then its exit status. Runs from the "
    "control node (forwarded there from elsewhere). Exit codes: 0 it succeeded everywhere; "
    "1 it failed on a node (each named); 2 bad input."
)
CONTROL_EPILOG = (
    "Example: `hpcinfer cluster control -c cluster.yaml 'ls'` runs `ls` in the project "
    "folder on the control node (here, when this is the control node). Exit code: the "
    "command's own (255: ssh could not reach the control node); 2 bad input."
)
STATUS_EPILOG = (
    "Example: `hpcinfer cluster status -c cluster.yaml --json`. Read on the control node. "
    "Exit codes: 0 every node reachable with its venv, Ray as recorded, the server up; 1 "
    "something is not (named); 2 bad input."
)

CLUSTER_FILE = Annotated[
    str | None,
    typer.Argument(
        metavar="NAME@VERSION|FILE.yaml",
        help=f"{FILE_HELP} The same as --cluster, which every cluster command takes.",
        show_default=False,
    ),
]
CLUSTER_OPTION = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        "-c",
        metavar="NAME@VERSION|FILE.yaml",
        help=f"{FILE_HELP} Default: ${CLUSTER_ENV}, else {DEFAULT_CLUSTER_FILE} here.",
    ),
]
FORWARDED = Annotated[bool, typer.Option("--forwarded", hidden=True)]
LIMIT = Annotated[
    str | None,
    typer.Option(
        metavar="HOSTS", help="Only these nodes or groups (control, compute), comma-separated."
    ),
]
COMMAND = Annotated[str, typer.Argument(metavar="CMD", help="A shell command line.")]


def inventory(
    file: CLUSTER_FILE = None,
    cluster_file: CLUSTER_OPTION = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", metavar="DIR", help="Write the files into DIR (default: print them)."
        ),
    ] = None,
) -> None:
    """Render the Ansible inventory and group variables from the cluster file."""
    from hpcinfer.provision.cluster import load_cluster
    from hpcinfer.provision.inventory import render_inventory, write_inventory

    cluster = load_cluster(_cluster_source(file or cluster_file))
    if cluster.vllm_device is None:
        _note(f"note: {cluster.no_vllm_reason()}")
    if out is None:
        for name, text in render_inventory(cluster).items():
            typer.echo(f"--- # {name}\n{text}", nl=False)
        return
    for path in write_inventory(cluster, out):
        typer.echo(str(path))


def doc(file: CLUSTER_FILE = None, cluster_file: CLUSTER_OPTION = None) -> None:
    """Describe the cluster from its file: settings, then each node and what runs on it."""
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console
    from hpcinfer.provision.cluster import load_cluster
    from hpcinfer.provision.describe import COLUMNS, facts, node_rows

    cluster = load_cluster(_cluster_source(file or cluster_file))
    console = wide_console()
    for label, value in facts(cluster):
        console.print(f"[bold]{label}:[/bold] {escape(value)}", highlight=False, soft_wrap=True)
    table = unclipped(Table(*COLUMNS))
    for row in node_rows(cluster):
        table.add_row(*(escape(cell) for cell in row.cells()))
    console.print(table)


def _note(text: str) -> None:
    from hpcinfer.core.terminal import wide_console

    wide_console(stderr=True).print(escape(text), highlight=False, soft_wrap=True)


def _progress(text: str) -> None:
    """A progress line (Ansible's output, a forwarded command's notes) as it came."""
    import sys

    print(text, file=sys.stderr, flush=True)


def _cluster_source(value: str | None) -> str:
    """--cluster, else $HPCINFER_CLUSTER, else cluster.yaml here; else a usage error."""
    import os

    chosen = value or os.environ.get(CLUSTER_ENV) or ""
    if chosen:
        return chosen
    if Path(DEFAULT_CLUSTER_FILE).is_file():
        return DEFAULT_CLUSTER_FILE
    from hpcinfer.errors import SpecError

    raise SpecError(
        f"which cluster? give --cluster NAME@VERSION|FILE.yaml, set ${CLUSTER_ENV}, or put "
        f"the cluster file in {DEFAULT_CLUSTER_FILE} here"
    )


class _Run:
    """A command's stop request (fed by SIGINT/SIGTERM and, forwarded, by the caller's ssh
    ending) and how it reports: a forwarded command sends its result as one line."""

    def __init__(self, forwarded: bool, out: flags.Flags | None) -> None:
        from hpcinfer.core.stop import StopSignal

        self.forwarded = forwarded
        self.quiet = bool(out and out.quiet)
        self.json_out = bool(out and out.json_out)
        self.stop = StopSignal()
        if forwarded:
            from hpcinfer.provision.remote import end_with_stdin

            end_with_stdin(lambda: self.stop.abort("the command that forwarded it ended"))

    @property
    def progress(self) -> Any:
        return None if self.quiet else _progress

    def report(self, result: Any) -> bool:
        """Print the result for a forwarding caller or as JSON; True when that was all."""
        if self.forwarded:
            from hpcinfer.provision.remote import result_line

            print(result_line(result), flush=True)
            return True
        if self.json_out:
            print(result.model_dump_json(indent=1))
            return True
        return False


@flags.takes(*flags.OUTPUT_MODE)
def sync(
    project: Annotated[
        Path | None,
        typer.Argument(metavar="PROJECT", help="The project folder (default: this one)."),
    ] = None,
    cluster: CLUSTER_OPTION = None,
    *,
    flags: flags.Flags,
) -> None:
    """Copy the project folder to the control node (rsync over ssh; no venvs or outputs)."""
    from hpcinfer import api

    result = api.cluster_sync(_cluster_source(cluster), project)
    if flags.json_out:
        print(result.model_dump_json(indent=1))
        return
    if not flags.quiet:
        for path in result.copied:
            typer.echo(path)
        _note(
            f"synced {result.source} to {result.target}: {len(result.copied)} file(s) copied, "
            f"{len(result.deleted)} deleted; skipped: {', '.join(result.skipped) or 'nothing'}"
        )


def _playbook_command(
    name: str, cluster: str | None, limit: str | None, check: bool, forwarded: bool, out: Any
) -> None:
    from hpcinfer import api
    from hpcinfer.core.stop import signals_feed

    run = _Run(forwarded, out)
    source = _cluster_source(cluster)
    here = True if forwarded else None
    with signals_feed(run.stop):
        if name == "configure":
            result = api.cluster_configure(
                source, limit=limit, check=check, progress=run.progress, stop=run.stop, here=here
            )
        else:
            result = api.cluster_verify(source, progress=run.progress, stop=run.stop, here=here)
    if not run.report(result):
        hosts = len(result.hosts)
        if result.ok and not run.quiet:
            mode = " (check mode: nothing changed)" if result.check else ""
            _note(f"{name}: {hosts} host(s) ok, {result.changed} change(s){mode}")
    if not result.ok:
        if not forwarded:
            _note(f"error: {result.problem()}")
        raise typer.Exit(1)


@flags.takes(*flags.OUTPUT_MODE)
def configure(
    cluster: CLUSTER_OPTION = None,
    limit: LIMIT = None,
    check: Annotated[
        bool, typer.Option("--check", help="Ansible's dry run: report, change nothing.")
    ] = False,
    forwarded: FORWARDED = False,
    *,
    flags: flags.Flags,
) -> None:
    """Configure the nodes with Ansible (run on the control node)."""
    _playbook_command("configure", cluster, limit, check, forwarded, flags)


@flags.takes(*flags.OUTPUT_MODE)
def verify(
    cluster: CLUSTER_OPTION = None,
    forwarded: FORWARDED = False,
    *,
    flags: flags.Flags,
) -> None:
    """Verify the cluster with Ansible: vLLM's answer, the Ray cluster, the server."""
    _playbook_command("verify", cluster, None, False, forwarded, flags)


@flags.takes("json_out")
def compute(
    command: COMMAND,
    cluster: CLUSTER_OPTION = None,
    forwarded: FORWARDED = False,
    *,
    flags: flags.Flags,
) -> None:
    """Run CMD on every compute node: each node's output and exit status."""
    from hpcinfer import api
    from hpcinfer.core.stop import signals_feed

    run = _Run(forwarded, flags)
    source = _cluster_source(cluster)
    with signals_feed(run.stop):
        result = api.cluster_compute(
            source, command, stop=run.stop, here=True if forwarded else None, progress=_progress
        )
    if not run.report(result):
        for host in result.hosts:
            for line in host.output.splitlines():
                typer.echo(f"{host.host}: {line}")
            reached = "" if host.reached else " (ssh could not reach it)"
            typer.echo(f"{host.host}: exit {host.exit_code}{reached}")
    if not result.ok:
        if not forwarded:
            _note(f"error: {result.problem()}")
        raise typer.Exit(1)


@flags.takes("json_out")
def control(command: COMMAND, cluster: CLUSTER_OPTION = None, *, flags: flags.Flags) -> None:
    """Run CMD on the control node, in the project folder."""
    import sys

    from hpcinfer import api
    from hpcinfer.core.stop import signals_feed

    run = _Run(False, flags)
    with signals_feed(run.stop):
        result = api.cluster_control(_cluster_source(cluster), command, stop=run.stop)
    host = result.hosts[0]
    if not run.report(result):
        sys.stdout.write(host.output)
        sys.stdout.flush()
    code = host.exit_code
    raise typer.Exit(code if 0 <= code <= 255 else 1)


@flags.takes("json_out")
def status(
    cluster: CLUSTER_OPTION = None, forwarded: FORWARDED = False, *, flags: flags.Flags
) -> None:
    """Show each node (reachable, versions), the Ray cluster and the servers."""
    from hpcinfer import api

    run = _Run(forwarded, flags)
    result = api.cluster_status(
        _cluster_source(cluster), here=True if forwarded else None, progress=_progress
    )
    if not run.report(result):
        _print_status(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_status(result: Any) -> None:
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console
    from hpcinfer.provision.status import VERSIONS

    table = Table("node", "role", "address", "reachable", *VERSIONS, "problem",
                  title=f"cluster {result.cluster}")  # fmt: skip
    for node in result.nodes:
        table.add_row(
            node.node,
            node.role,
            node.address,
            "yes" if node.reachable else "NO",
            *(node.versions.get(v) or "-" for v in VERSIONS),
            escape(node.problem) or "-",
        )
    console = wide_console()
    console.print(unclipped(table))
    ray = "as recorded" if result.ray_ok else f"NOT ready: {result.ray_problem or 'see ray status'}"
    console.print(f"ray: {escape(ray)}", highlight=False, soft_wrap=True)
    if result.servers or result.servers_problem:
        for server in result.servers:
            url, state = server.get("url", "?"), server.get("state", "?")
            console.print(f"server: {escape(str(url))} {escape(str(state))}", highlight=False)
        if result.servers_problem:
            console.print(f"servers: {escape(result.servers_problem)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `cluster` (with its subcommands) to the main app."""
    cluster = typer.Typer(help=CLUSTER_HELP, no_args_is_help=True, add_completion=False)
    cluster.command(epilog=INVENTORY_EPILOG)(inventory)
    cluster.command(epilog=DOC_EPILOG)(doc)
    cluster.command(epilog=SYNC_EPILOG)(sync)
    cluster.command(epilog=CONFIGURE_EPILOG)(configure)
    cluster.command(epilog=VERIFY_EPILOG)(verify)
    cluster.command(epilog=CONTROL_EPILOG)(control)
    cluster.command(epilog=COMPUTE_EPILOG)(compute)
    cluster.command(epilog=STATUS_EPILOG)(status)
    app.add_typer(cluster, name="cluster")
