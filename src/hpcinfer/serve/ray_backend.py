"""Backend ray: servers on the cluster of `hpcinfer ray up`, placed by Ray.

The cluster file says where the GCS is and which nodes joined with how many GPUs; servers
take its nodes in order, `nodes` at a time (two TP8 x PP2 servers on 4 nodes of 8 GPUs).
Before vLLM starts, the placement is checked against the live cluster with a short deadline:
first from the GCS's node list (every node of each server alive, with the GPUs its ranks
need), then by asking Ray for the placement groups vLLM will ask for (`ray_probe`). So a
layout that cannot be placed fails in seconds, naming what is missing, instead of after
vLLM's 30-minute wait. Each server's API process (Ray's driver) runs on its first node: vLLM
wants a GPU bundle on the driver's node. It runs `vllm serve ... --distributed-executor-backend
ray` (named explicitly: since vLLM 0.11.1 it is not picked by itself) with RAY_ADDRESS, and
VLLM_HOST_IP, GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME from the chosen interface.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcinfer.cluster.allocation import RankInfo
from hpcinfer.cluster.interfaces import node_network
from hpcinfer.core.models import resolve_model
from hpcinfer.errors import SpecError
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import EventSink, Fleet, ServerLaunch
from hpcinfer.serve.layout import NodeShape, ServerLayout, check_allocation, count, plan_layout
from hpcinfer.serve.plan import WILDCARD_HOSTS, log_dir
from hpcinfer.serve.ports import server_ports
from hpcinfer.serve.server_argv import ServerArgs, api_key, server_argv, server_env
from hpcinfer.serve.span_node import network_env
from hpcinfer.spec import JobSpec

if TYPE_CHECKING:
    from hpcinfer.raycluster.cluster_file import RayClusterFile
    from hpcinfer.raycluster.gcs import LiveNode

PLACEMENT_TIMEOUT_S = 10.0
"""How long Ray may take to place the servers' placement groups in the check."""
GCS_TIMEOUT_S = 5.0


def load_ray_cluster(spec: JobSpec) -> RayClusterFile:
    from hpcinfer.raycluster.cluster_file import load_cluster

    return load_cluster(spec.workers.ray_cluster)


def ray_layout(
    spec: JobSpec, cluster: RayClusterFile
) -> tuple[ServerLayout, list[tuple[str, ...]]]:
    """The servers' layout on the cluster's nodes (as declared by `ray up`), and each
    server's hosts; a SpecError when they cannot make whole servers."""
    shape = NodeShape(f"the Ray cluster {cluster.name}", cluster.gpus_per_node)
    if cluster.gpus_per_node < 1:
        raise SpecError(
            f"the Ray cluster {cluster.name} declares no GPUs per node: vLLM's Ray backend "
            "places one GPU per rank; bring it up with `hpcinfer ray up --gpus-per-node N`"
        )
    hosts = cluster.gpu_hosts
    layout = plan_layout(spec, shape, len(hosts))
    check_allocation(layout, hosts)
    return layout, layout.groups(hosts)


def missing_resources(
    layout: ServerLayout, groups: Sequence[tuple[str, ...]], live: Sequence[LiveNode]
) -> str | None:
    """Why the live cluster cannot hold these servers (None when it can, by its node list):
    e.g. 'needs 16 GPUs in 2 nodes of 8; the cluster has h2 with 4'."""
    by_host = {n.host: n for n in live if n.alive and n.host}
    need = layout.ranks_per_node
    short: list[str] = []
    for group in groups:
        for host in group:
            node = by_host.get(host)
            if node is None:
                dead = any(n.host == host for n in live)
                short.append(f"{host} {'dead' if dead else 'not joined'}")
            elif node.gpus < need:
                short.append(f"{host} with {node.gpus:g}")
    if not short:
        return None
    servers = f"{len(groups)} servers of " if len(groups) > 1 else ""
    needs = "each need" if len(groups) > 1 else "needs"
    return (
        f"{servers}{layout.describe()} {needs} {layout.world} GPUs in "
        f"{count(layout.nodes, 'node')} of {need}; the cluster has {', '.join(short)}"
    )


def probe_placement(address: str, bundles: int, groups: int, timeout_s: float) -> list[bool]:
    """`ray_probe` in a child process, killed if Ray itself hangs."""
    argv = [sys.executable, "-m", "hpcinfer.serve.ray_probe", address, str(bundles)]
    argv += [str(groups), str(timeout_s)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s + 60, env=dict(os.environ)
        )
    except subprocess.TimeoutExpired:
        raise ServeError(
            f"the placement check against the Ray cluster at {address} did not finish within "
            f"{timeout_s + 60:.0f}s: check `hpcinfer ray status`"
        ) from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            ready: list[bool] = json.loads(line)["ready"]
            return ready
    tail = "\n".join((done.stderr or done.stdout).splitlines()[-12:])
    raise ServeError(
        f"the placement check against the Ray cluster at {address} failed (exit "
        f"{done.returncode}):\n{tail}"
    )


def check_placement(
    cluster: RayClusterFile,
    layout: ServerLayout,
    groups: Sequence[tuple[str, ...]],
    timeout_s: float = PLACEMENT_TIMEOUT_S,
) -> None:
    """Refuse (ServeError) a layout the live cluster cannot place, within seconds."""
    from hpcinfer.raycluster.gcs import live_nodes

    live = live_nodes(cluster.address, GCS_TIMEOUT_S, cluster.cluster_id)
    missing = missing_resources(layout, groups, live)
    if missing:
        raise ServeError(f"cannot place the servers on the Ray cluster {cluster.name}: {missing}")
    ready = probe_placement(cluster.address, layout.world, len(groups), timeout_s)
    if not all(ready):
        stuck = [i for i, ok in enumerate(ready) if not ok]
        raise ServeError(
            f"cannot place the servers on the Ray cluster {cluster.name}: Ray did not place "
            f"{len(stuck)} of {len(ready)} placement groups of {layout.world} x {{GPU: 1}} "
            f"within {timeout_s:g}s (servers {', '.join(map(str, stuck))}); its GPUs are "
            "taken by other work, or spread too thin: see `hpcinfer ray status`"
        )


def plan_ray_server(
    spec: JobSpec,
    cwd: Path,
    registry: Path,
    cluster: RayClusterFile,
    layout: ServerLayout,
    server: int,
    *,
    rank: int = 0,
    write_to: Path,
    on_event: EventSink | None = None,
    env: Mapping[str, str] | None = None,
) -> Fleet:
    """Server `server`'s API process (Ray's driver) on this node: its first one, or the
    cluster's head where the head has no GPU (vLLM's Ray executor then needs none there)."""
    env = os.environ if env is None else env
    serve = spec.serve
    group = layout.groups(cluster.gpu_hosts)[server]
    records = {n.host: n for n in cluster.nodes}
    network = node_network(serve.interface or cluster.interface)
    first = records[cluster.head_host if cluster.driver_on_head else group[0]]
    if network.address != first.address:
        where = "the cluster's head" if cluster.driver_on_head else "its first node"
        raise SpecError(
            f"server {server}'s API process runs on {where}, {first.host} "
            f"({first.address}), but this node's address is {network.address}: run it there "
            "(vLLM's Ray driver needs a GPU of its node, unless the head has none), or pass "
            "the --interface of the cluster's network"
        )
    key = api_key(serve, env)
    model_path, model_name = resolve_model(spec, cwd)
    (port,) = server_ports(serve.host, serve.port, 1)
    args = ServerArgs(model_path, model_name, serve.host, port.port, on_cpu=False)
    child_env = server_env(env, {}, key)  # Ray gives each rank its GPU
    child_env.update(network_env(network, network.address))
    child_env["RAY_ADDRESS"] = cluster.address
    devices = [f"gpu{i}" for i in range(layout.ranks_per_node)]
    nodes = tuple(
        {
            "node": host,
            "address": records[host].address,
            "node_rank": i,
            "rank": rank + i,
            "devices": devices,
        }
        for i, host in enumerate(group)
    )
    shown = network.address if serve.host in WILDCARD_HOSTS else serve.host
    launch = ServerLaunch(
        index=server,
        argv=server_argv(args, spec.engine, serve),
        env=child_env,
        log=log_dir(spec, cwd, registry) / f"{first.host}-server{server}-ray.log",
        url=f"http://{shown}:{port.port}",
        model=model_name,
        node=first.host,
        devices=tuple(f"{host}:{d}" for host in group for d in devices),
        rank=rank,
        nodes=nodes,
        verify=True,
    )
    notes = [f"server {server}: {port.note}"] if port.note else []
    return Fleet(
        [launch],
        write_to,
        api_key=key,
        ready_timeout_s=serve.ready_timeout_s,
        on_event=on_event,
        notes=notes,
    )


def ray_seat(
    layout: ServerLayout, groups: Sequence[tuple[str, ...]], rank: RankInfo | None
) -> tuple[int, int]:
    """(server, node rank) of this serve rank; without ranks, the one server's first node."""
    if rank is None:
        if len(groups) > 1:
            raise SpecError(
                f"{len(groups)} servers ({layout.describe()} each) over the Ray cluster: each "
                "server's API process runs on its first node, so pass --launcher ssh|mpi|srun "
                "(one serve rank per node of the cluster)"
            )
        return 0, 0
    hosts = sum(len(g) for g in groups)
    if rank.world_size != hosts or rank.local_size != 1:
        raise SpecError(
            f"{rank.world_size} serve ranks ({rank.local_size} on this node) for a Ray cluster "
            f"of {hosts} nodes: start one serve rank per node of the cluster"
        )
    return layout.place_rank(rank.rank)
