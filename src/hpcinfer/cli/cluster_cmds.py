"""CLI group `hpcinfer cluster`: a cluster of one's own, from its versioned cluster file.

Thin: a file (NAME@VERSION of a shipped one, or a path) -> `hpcinfer.provision`; nothing
heavy at module level, so `hpcinfer --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

CLUSTER_HELP = (
    "A cluster of your own (a control node and compute nodes, configured with Ansible over "
    "ssh), described by one versioned cluster file: `inventory` renders the Ansible inventory "
    "and group variables from it, `doc` describes the cluster."
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

CLUSTER_FILE = Annotated[str, typer.Argument(metavar="NAME@VERSION|FILE.yaml", help=FILE_HELP)]


def inventory(
    file: CLUSTER_FILE,
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

    cluster = load_cluster(file)
    if cluster.vllm_device is None:
        _note(f"note: {cluster.no_vllm_reason()}")
    if out is None:
        for name, text in render_inventory(cluster).items():
            typer.echo(f"--- # {name}\n{text}", nl=False)
        return
    for path in write_inventory(cluster, out):
        typer.echo(str(path))


def doc(file: CLUSTER_FILE) -> None:
    """Describe the cluster from its file: settings, then each node and what runs on it."""
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console
    from hpcinfer.provision.cluster import load_cluster
    from hpcinfer.provision.describe import COLUMNS, facts, node_rows

    cluster = load_cluster(file)
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


def register(app: typer.Typer) -> None:
    """Add `cluster` (with its subcommands) to the main app."""
    cluster = typer.Typer(help=CLUSTER_HELP, no_args_is_help=True, add_completion=False)
    cluster.command(epilog=INVENTORY_EPILOG)(inventory)
    cluster.command(epilog=DOC_EPILOG)(doc)
    app.add_typer(cluster, name="cluster")
