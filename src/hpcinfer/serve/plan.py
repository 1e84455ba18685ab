"""From a job spec to the servers of this node: devices, ports, argv, environment, logs.

Nothing starts here, so everything that can be wrong (an unset key variable, a loopback
address across hosts, no free port, a bad model path) fails before a server burns time.

Placement follows `hpcinfer run`: one server per device group of the hardware profile
(`serve.servers` to choose the count), TP devices per server; on CPU one server on all
cores (a server per core would start as many engines as the node has cores). Several
serve ranks on one node (e.g. `mpiexec -n 2` on one host) split the node: rank r takes
servers `r * servers ... (r + 1) * servers - 1` of the node's plan, and their ports.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.cluster import PlacementPlan, cpu_affinity, plan_placement, resolve_profile
from hpcinfer.cluster.allocation import RankInfo, short_hostname
from hpcinfer.core.models import resolve_model
from hpcinfer.errors import SpecError
from hpcinfer.serve.fleet import EventSink, Fleet, ServerLaunch
from hpcinfer.serve.layout import plan_layout
from hpcinfer.serve.ports import server_ports
from hpcinfer.serve.server_argv import ServerArgs, api_key, server_argv, server_env
from hpcinfer.spec import JobSpec

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOG_DIR_NAME = "serve-logs"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reachable(host: str, multi_host: bool) -> None:
    """Servers on several hosts must listen where the other hosts can reach them."""
    if multi_host and is_loopback(host):
        raise SpecError(
            f"serve.host is {host}, reachable from its own node only, but the servers run "
            "on several hosts: pass --host 0.0.0.0 (or the interface address of the fast "
            "network) and --api-key-env NAME (so only holders of the key can use them)"
        )


def advertised_url(host: str, port: int, hostname: str | None = None) -> str:
    """The URL others use: the node's name for a wildcard bind, else the bound address."""
    shown = (hostname or socket.gethostname()) if host in WILDCARD_HOSTS else host
    if ":" in shown:
        shown = f"[{shown}]"  # IPv6 literal
    return f"http://{shown}:{port}"


@dataclass(frozen=True)
class NodeShare:
    """This rank's servers: their placements, plus what the node as a whole holds."""

    placement: PlacementPlan
    first: int  # index on the node of this rank's first server
    servers_on_node: int
    local_rank: int
    local_size: int


def node_share(spec: JobSpec, rank: RankInfo | None) -> NodeShare:
    """Place the node's servers and take this rank's slice of them: each server on TP x PP
    x DP devices (on CPU, cores split between those ranks)."""
    profile = resolve_profile(spec.workers.profile)
    layout = plan_layout(spec, profile, hosts=1)  # this node's servers (`serve` decides spans)
    if layout.spans_nodes:
        raise SpecError(
            f"each server spans {layout.nodes} nodes ({layout.describe()}): start such servers "
            "with `hpcinfer serve --launcher mpi|srun|ssh` and send work to them with "
            "--engine openai --endpoints FILE"
        )
    tp, mode = layout.world, spec.workers.placement
    local_rank, local_size = (rank.local_rank, rank.local_size) if rank else (0, 1)
    per_rank = spec.serve.servers
    if per_rank is None and profile.is_cpu:
        per_rank = 1  # one engine on all of the rank's cores, not one per core
    elif per_rank is None:
        groups = len(plan_placement(profile, tp=tp, mode=mode).placements)
        per_rank = max(1, groups // local_size)
    node = plan_placement(profile, workers=per_rank * local_size, tp=tp, mode=mode)
    first = local_rank * per_rank
    mine = dataclasses.replace(node, placements=node.placements[first : first + per_rank])
    return NodeShare(mine, first, per_rank * local_size, local_rank, local_size)


def log_dir(spec: JobSpec, cwd: Path, registry: Path) -> Path:
    if spec.serve.log_dir:
        chosen = Path(spec.serve.log_dir).expanduser()
        return chosen if chosen.is_absolute() else cwd / chosen
    return registry.parent / LOG_DIR_NAME


def plan_fleet(
    spec: JobSpec,
    cwd: Path,
    registry_path: Path,
    rank_info: RankInfo | None = None,
    *,
    write_to: Path | None = None,
    on_event: EventSink | None = None,
    env: Mapping[str, str] | None = None,
) -> Fleet:
    """The fleet of this node (or of this serve rank), ready to `start()`.

    `registry_path` decides the default log folder (`<its dir>/serve-logs`); the fleet
    writes its states to `write_to` (this rank's part across nodes), else to it.
    """
    env = os.environ if env is None else env
    serve = spec.serve
    multi_host = rank_info is not None and rank_info.world_size > rank_info.local_size
    check_reachable(serve.host, multi_host)
    key = api_key(serve, env)
    share = node_share(spec, rank_info)
    model_path, model_name = resolve_model(spec, cwd)
    count = len(share.placement.placements)
    ports = server_ports(serve.host, serve.port, count, share.local_rank, share.local_size)
    hostname = socket.gethostname()
    node = short_hostname(hostname)
    logs = log_dir(spec, cwd, registry_path)
    on_cpu = share.placement.profile.is_cpu
    notes = list(share.placement.warnings) if share.local_rank == 0 else []
    if key is None and not is_loopback(serve.host):
        notes.append(
            f"servers listen on {serve.host} without an API key: anyone who can reach this "
            "node can use them; pass --api-key-env NAME to require one"
        )
    launches = []
    for i, (placement, port) in enumerate(zip(share.placement.placements, ports, strict=True)):
        index = share.first + i
        if port.note:
            notes.append(f"server {index}: {port.note}")
        args = ServerArgs(
            model_path,
            model_name,
            serve.host,
            port.port,
            on_cpu,
            share.servers_on_node,
            ranks_on_node=share.placement.tp,
        )
        cores = cpu_affinity(placement.group)
        launches.append(
            ServerLaunch(
                index=index,
                argv=server_argv(args, spec.engine, serve),
                env=server_env(env, placement.env, key),
                log=logs / f"{node}-{index}.log",
                url=advertised_url(serve.host, port.port, hostname),
                model=model_name,
                node=node,
                devices=tuple(placement.group.labels),
                cores=frozenset(cores) if cores else None,
                rank=rank_info.rank if rank_info else 0,
            )
        )
    return Fleet(
        launches,
        write_to or registry_path,
        api_key=key,
        ready_timeout_s=serve.ready_timeout_s,
        on_event=on_event,
        notes=notes,
    )
