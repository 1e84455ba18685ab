"""CLI group `hpcinfer ray`: a verified Ray cluster over the allocation (up, status, down),
and the hidden node commands the launchers run on each node (node-start, node-stop).

Thin: options -> `hpcinfer.api.ray_up/ray_status/ray_down` (or the node functions); nothing
heavy at module level (Ray is imported by the commands that read a cluster).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.raycluster.node import RAY_START_TIMEOUT_S
from hpcinfer.raycluster.node_processes import TERM_GRACE_S
from hpcinfer.raycluster.request import DEFAULT_READY_TIMEOUT_S, DEFAULT_STAGGER_S

RAY_HELP = (
    "A Ray cluster over the allocation, verified before use: `up` starts the head on the "
    "first node and workers on the others and waits until every node joined with its GPUs "
    "and the same versions; `status` compares the live cluster with it; `down` stops only "
    "this cluster's processes."
)
UP_EPILOG = (
    "Example, in a PBS job on 2 Aurora nodes: `hpcinfer ray up --interface hsn0` (GPU tiles "
    "from the aurora profile), then `hpcinfer serve --backend ray ...`, then `hpcinfer ray "
    "down`. Outside a job: `hpcinfer ray up --hostfile hosts.txt --launcher ssh "
    "--gpus-per-node 4 --name mycluster`. The cluster file (default ~/.hpcinfer/ray/NAME.json, "
    "or $HPCINFER_RAY_CLUSTER) tells later commands where the cluster is. Exit codes: 0 ready "
    "and verified; 1 not ready by the deadline, a host failed or versions differ (the hosts "
    "are named; nothing is left running); 2 bad options."
)
STATUS_EPILOG = (
    "Exit codes: 0 the live cluster matches the recorded one; 1 it does not (each "
    "host at fault is named) or its head does not answer; 2 no cluster file."
)
DOWN_EPILOG = (
    "The workers are stopped first, then the head (always, even when a worker fails). Exit "
    "codes: 0 stopped, nothing of the cluster left, file removed (with --forget: on every "
    "host that answered); 1 a host could not be stopped (the file is kept: run down again, "
    "or add --forget when the host is gone); 2 no cluster file."
)

NAME = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="The cluster's name (default: the job id, PBS_JOBID/SLURM_JOB_ID, else "
        "'local'); it picks the cluster file, temp dir and ports.",
    ),
]
CLUSTER_FILE = Annotated[
    Path | None,
    typer.Option(
        "--cluster-file",
        metavar="FILE.json",
        help="The cluster file (default: $HPCINFER_RAY_CLUSTER, else ~/.hpcinfer/ray/NAME.json).",
    ),
]


def _stagger(value: str) -> float:
    from hpcinfer.core.durations import parse_duration

    try:
        return parse_duration(value, what="--stagger")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


READY_TIMEOUT_HELP = (
    f"How long the whole cluster may take to be ready ({flags.DURATION_FORMS}; default 5m)."
)


@flags.takes("hostfile", "profile", *flags.OUTPUT_MODE)
def up(
    launcher: Annotated[
        str | None,
        typer.Option(
            metavar="ssh|mpi|srun|local",
            help="How Ray starts on the other hosts: ssh, mpi (mpiexec), srun, or "
            "local (this machine alone; the default without an allocation; else ssh).",
        ),
    ] = None,
    interface: Annotated[
        str | None,
        typer.Option(
            metavar="IF",
            help="Network interface whose address each node gives Ray, read on the "
            "node (default: the hardware profile's, else the host name's address).",
        ),
    ] = None,
    gpus_per_node: Annotated[
        int | None,
        typer.Option(
            help="GPUs each node declares to Ray (default: the hardware profile's "
            "GPUs or tiles per node; 0 on a CPU)."
        ),
    ] = None,
    head_gpus: Annotated[
        int | None,
        typer.Option(
            help="GPUs the head (the first host) declares, when it differs from the others: "
            "a control node with no GPU heading GPU compute nodes gives 0 (default: "
            "--gpus-per-node)."
        ),
    ] = None,
    cpus_per_node: Annotated[
        int | None, typer.Option(help="CPUs each node declares (default: Ray counts them).")
    ] = None,
    name: NAME = None,
    cluster_file: CLUSTER_FILE = None,
    port_base: Annotated[
        int | None,
        typer.Option(
            help="First of the 200 ports the cluster uses on every node (default: "
            "derived from the name, between 20000 and 32567)."
        ),
    ] = None,
    ready_timeout: Annotated[
        float,
        typer.Option(
            parser=flags.seconds("--ready-timeout"),
            metavar="DURATION",
            help=READY_TIMEOUT_HELP,
            show_default=False,
        ),
    ] = DEFAULT_READY_TIMEOUT_S,
    stagger: Annotated[
        float,
        typer.Option(
            parser=_stagger,
            metavar="DURATION",
            help="Delay between worker nodes' starts (default 1s; 0: all at once).",
            show_default=False,
        ),
    ] = DEFAULT_STAGGER_S,
    *,
    flags: flags.Flags,
) -> None:
    """Start a Ray cluster over the allocation and wait until it is verified."""
    from hpcinfer import api

    note = None if flags.quiet or flags.json_out else _note
    cluster = api.ray_up(
        hostfile=flags["hostfile"],
        launcher=launcher,
        interface=interface,
        gpus_per_node=gpus_per_node,
        head_gpus=head_gpus,
        cpus_per_node=cpus_per_node,
        name=name,
        cluster_file=cluster_file,
        port_base=port_base,
        ready_timeout_s=ready_timeout,
        stagger_s=stagger,
        profile=flags["profile"],
        note=note,
    )
    if flags.json_out:
        print(cluster.model_dump_json(indent=1))
    elif not flags.quiet:
        from hpcinfer.raycluster.cluster_file import cluster_path

        where = cluster_path(cluster_file, name)
        _note(
            f"Ray cluster {cluster.name!r} ready at {cluster.address}: "
            f"{len(cluster.nodes)} node(s), {_gpus_text(cluster)}; recorded in {where}"
        )


def _gpus_text(cluster: Any) -> str:
    """'4 GPU(s) each', or with a head of its own count '4 GPU(s) on each worker, 0 on the
    head'."""
    if cluster.head_gpus is None or cluster.head_gpus == cluster.gpus_per_node:
        return f"{cluster.gpus_per_node} GPU(s) each"
    return f"{cluster.gpus_per_node} GPU(s) on each worker, {cluster.head_gpus} on the head"


def status(
    name: NAME = None,
    cluster_file: CLUSTER_FILE = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show the live cluster against the recorded one: one row per host, what is wrong."""
    from hpcinfer import api

    report = api.ray_status(cluster_file, name=name)
    if json_out:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        _print_status(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_status(report: Any) -> None:
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console

    verdict = "matches" if report.ok else "does NOT match"
    table = Table(title=f"Ray cluster {report.name} at {report.address}: {verdict} the record")
    for column in (
        "host",
        "address",
        "state",
        "GPUs",
        "CPUs",
        "python",
        "ray",
        "vllm",
        "torch",
        "problem",
    ):
        table.add_column(column)
    for row in report.rows:
        table.add_row(
            row.host,
            row.address or row.expected_address or "-",
            row.state,
            _num(row.gpus),
            _num(row.cpus),
            *(row.versions.get(k, "") for k in ("python", "ray", "vllm", "torch")),
            "; ".join(row.problems) or "-",
        )
    wide_console().print(unclipped(table))
    if not report.head_answers:
        _note(report.problems[0])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def down(
    name: NAME = None,
    cluster_file: CLUSTER_FILE = None,
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Remove the cluster file once every host that answers stopped, even when "
            "some host cannot be reached (a node that is gone); a host that answers but "
            "cannot stop its Ray still keeps the file.",
        ),
    ] = False,
) -> None:
    """Stop every node of the cluster (only its own processes), then remove its file."""
    from hpcinfer import api

    report = api.ray_down(cluster_file, name=name, forget=forget)
    total = sum(report.stopped.values())
    _note(
        f"Ray cluster {report.name!r} is down: {total} process(es) stopped on "
        f"{len(report.stopped)} host(s)"
    )
    if report.forgotten:
        _note(
            f"forgotten without an answer (their Ray may still run): {', '.join(report.forgotten)}"
        )


HOSTS = Annotated[
    list[str],
    typer.Option("--host", help="This node's host (repeat: the launcher rank picks one)."),
]


def node_start(
    cluster: Annotated[str, typer.Option()],
    temp_root: Annotated[Path, typer.Option()],
    port_base: Annotated[int, typer.Option()],
    host: HOSTS,
    gpus: Annotated[int, typer.Option()] = 0,
    cpus: Annotated[int | None, typer.Option()] = None,
    interface: Annotated[str | None, typer.Option()] = None,
    head_address: Annotated[str | None, typer.Option()] = None,
    stagger: Annotated[float, typer.Option()] = 0.0,
    rank_offset: Annotated[int, typer.Option()] = 0,
    timeout: Annotated[float, typer.Option()] = RAY_START_TIMEOUT_S,
    block: Annotated[bool, typer.Option("--block")] = False,
    down_hint: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Start Ray on this node (run by `ray up` through the launcher on every node); with
    --block (mpi, srun) stay until the node's Ray is stopped."""
    import os

    from hpcinfer.raycluster.launching import RECORD_PREFIX
    from hpcinfer.raycluster.node import NodeStartRequest, node_start, which_host
    from hpcinfer.raycluster.ports import ray_ports

    env = dict(os.environ)
    me, index = which_host(host, env)
    request = NodeStartRequest(
        cluster=cluster,
        temp_root=temp_root,
        ports=ray_ports(port_base),
        gpus=gpus,
        cpus=cpus,
        interface=interface,
        head_address=head_address,
        stagger_s=stagger,
        timeout_s=timeout,
        down_hint=down_hint,
    )
    record = node_start(request, me, index + rank_offset, env)
    print(RECORD_PREFIX + json.dumps(record), flush=True)
    if block:
        from hpcinfer.raycluster.node import hold_node

        hold_node(Path(record["temp_dir"]))


def node_stop(
    temp_root: Annotated[Path, typer.Option()],
    host: HOSTS,
    grace: Annotated[float, typer.Option()] = TERM_GRACE_S,
) -> None:
    """Stop this node's Ray processes, only those of its temp dir (run by `ray down`)."""
    import os

    from hpcinfer.raycluster.launching import RECORD_PREFIX
    from hpcinfer.raycluster.node import node_stop, which_host

    me, _ = which_host(host, dict(os.environ))
    record = node_stop(temp_root, me, grace)
    print(RECORD_PREFIX + json.dumps(record), flush=True)
    if record["left"]:
        from hpcinfer.errors import RayClusterError

        raise RayClusterError(
            f"{me}: {record['left']} process(es) of its Ray survived SIGKILL: "
            + record["survivors"]
        )


def _note(text: str) -> None:
    from hpcinfer.core.terminal import wide_console

    wide_console(stderr=True).print(escape(text), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `ray` (with its subcommands) to the main app."""
    ray = typer.Typer(help=RAY_HELP, no_args_is_help=True, add_completion=False)
    ray.command(epilog=UP_EPILOG)(up)
    ray.command(epilog=STATUS_EPILOG)(status)
    ray.command(epilog=DOWN_EPILOG)(down)
    ray.command("node-start", hidden=True)(node_start)
    ray.command("node-stop", hidden=True)(node_stop)
    app.add_typer(ray, name="ray")
