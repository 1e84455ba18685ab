"""`hpcinfer serve --launcher mpi|srun|ssh` outside any rank: one serve rank per node.

The ranks run this very command line and find themselves in the launcher's rank variables,
exactly as when the user runs `mpiexec -ppn 1 hpcinfer serve --launcher mpi` (see
`hpcinfer.launch.rank_commands`, whose launch commands this reuses with one rank per node).
A stop request (the CLI feeds it from SIGTERM or SIGINT) reaches every rank through a stop
file beside the registry (`stop_file`: an ssh client would not pass a signal on), and the
launchers as SIGTERM only if the ranks have not ended after a grace period.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from hpcinfer.cluster import resolve_profile
from hpcinfer.cluster.allocation import read_allocation
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import SpecError
from hpcinfer.launch.outcome import launch_self
from hpcinfer.launch.rank_env import LAUNCH_ID_ENV
from hpcinfer.serve.failed_entry import failure_recorded
from hpcinfer.serve.layout import check_allocation, plan_layout
from hpcinfer.serve.node import registry_path
from hpcinfer.serve.plan import check_reachable
from hpcinfer.serve.server_argv import api_key
from hpcinfer.serve.stop_file import relay_to_ranks
from hpcinfer.spec import JobSpec

FAILED_RANK_GRACE_S = 15.0
"""How long the other ranks of a launch whose rank failed get to end on their own (a
server's first node records a dead follower itself) before the stop file ends them."""


def one_rank_per_node(spec: JobSpec) -> JobSpec:
    """launch_commands starts `workers.count` ranks per node; a serve rank runs all of its
    node's servers, so one per node."""
    return spec.model_copy(update={"workers": spec.workers.model_copy(update={"count": 1})})


def launch_serve_ranks(
    spec: JobSpec,
    launcher: str,
    argv: list[str],
    hostfile: Path | None,
    stop: StopSignal | None = None,
) -> int:
    """Start one serve rank per node of the allocation, wait, return the worst exit code. A
    stop request reaches every rank through its launcher, and each stops its servers."""
    registry = registry_path(spec, Path.cwd())
    with failure_recorded(spec, registry):  # `endpoints --wait` hears of it at once
        allocation = read_allocation(hostfile=hostfile)
        hosts = allocation.hosts if allocation.source != "local" else allocation.hosts[:1]
        check_reachable(spec.serve.host, len(hosts) > 1)
        api_key(spec.serve, os.environ)  # fail here, not once per rank
        # A layout that cannot be placed fails here, before any rank starts.
        if spec.serve.backend == "ray":
            spans = check_ray_layout(spec, hosts)
        else:
            layout = plan_layout(spec, resolve_profile(spec.workers.profile), len(hosts))
            check_allocation(layout, hosts)
            spans = layout.spans_nodes
    # The ranks tell this launch's files (rendezvous, stop request) from an earlier one's by
    # this id: the ssh launcher passes it to each rank, mpiexec and srun pass the environment.
    launch = uuid.uuid4().hex
    os.environ[LAUNCH_ID_ENV] = launch
    stop = stop or StopSignal()
    on_failure = None
    pending: list[threading.Timer] = []
    if spans:
        # The nodes of a server cannot serve without each other: a rank that failed ends
        # the launch, as mpiexec does (ssh clients each run on alone), through the stop file.
        # Not at once: the server's first node sees a follower's death itself and records
        # the server dead with the reason; a stop arriving first would record it stopped.
        def on_failure(why: str) -> None:
            timer = threading.Timer(
                FAILED_RANK_GRACE_S, stop.drain, (f"serve {why}: stopping the other ranks",)
            )
            timer.daemon = True
            pending.append(timer)
            timer.start()

    try:
        with relay_to_ranks(registry, launch, stop) as launchers:
            return launch_self(
                one_rank_per_node(spec), launcher, argv, allocation, launchers, on_failure
            )
    finally:
        for timer in pending:
            timer.cancel()


def check_ray_layout(spec: JobSpec, hosts: tuple[str, ...]) -> bool:
    """Backend ray: the ranks go to the cluster's nodes, and the live cluster can place the
    servers (checked once here, for all of them, before any rank starts). True when a
    server spans nodes."""
    from hpcinfer.serve import ray_backend

    cluster = ray_backend.load_ray_cluster(spec)
    layout, groups = ray_backend.ray_layout(spec, cluster)
    if list(hosts) != cluster.hosts:
        raise SpecError(
            f"the allocation's nodes ({', '.join(hosts)}) are not the Ray cluster's "
            f"({', '.join(cluster.hosts)}): pass the --hostfile the cluster was brought up "
            "with, or the --ray-cluster of this allocation"
        )
    ray_backend.check_placement(cluster, layout, groups)
    return layout.spans_nodes
