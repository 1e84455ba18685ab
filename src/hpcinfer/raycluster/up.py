"""`hpcinfer ray up`: the head on the first host, the workers on the others, verified.

The head starts first (the workers need its address); then the workers, through the
launcher, in a staggered order (all at once fails on some machines: ray 59778). While
they start, the GCS's node list is read every half second: ready is `readiness.assess`
finding nothing wrong; a version mismatch or a failed node command ends the wait at once;
the deadline ends it naming every host still missing. On any failure the nodes are taken
down (only this cluster's processes) before the error is raised, so a failed `up` leaves
nothing running. The cluster file is created before anything starts (state "starting",
exclusively: a second `up` of the same file is refused), so `ray down` can stop what a
killed `up` left; it is marked "ready" once the cluster is verified. SIGTERM and SIGHUP
during `up` raise, so its take-down runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.errors import RayClusterError
from hpcinfer.raycluster.cluster_file import (
    Launcher,
    RayClusterFile,
    RayNodeRecord,
    create_cluster,
    launch_log_dir,
    now_text,
    save_cluster,
)
from hpcinfer.raycluster.down import stop_hosts
from hpcinfer.raycluster.fingerprint import label_value
from hpcinfer.raycluster.gcs import LiveNode, cluster_id_of, live_nodes, raylet_answers
from hpcinfer.raycluster.launching import (
    BLOCKING_LAUNCHERS,
    RunningLaunch,
    hpcinfer_argv,
    node_launches,
    settle,
    start_launches,
)
from hpcinfer.raycluster.layout import cluster_root, node_temp_dir
from hpcinfer.raycluster.node import RAY_START_TIMEOUT_S
from hpcinfer.raycluster.ports import RayPorts, port_base_for, ray_ports
from hpcinfer.raycluster.readiness import ExpectedNode, NodeProblem, assess, summary

POLL_S = 0.5
SETTLE_S = 60.0
"""The least a failed `up` lets node starts still running end before stopping the nodes."""
GCS_TIMEOUT_S = 5.0

Note = Callable[[str], None]


@dataclass(frozen=True)
class UpRequest:
    """What `ray up` was asked for, every default already resolved."""

    name: str
    hosts: tuple[str, ...]  # the allocation's order: the head is hosts[0]
    launcher: Launcher
    cluster_file: Path
    gpus_per_node: int
    cpus_per_node: int | None = None
    interface: str | None = None
    port_base: int | None = None
    head_gpus: int | None = None
    """GPUs the head declares; None: `gpus_per_node` (a GPU-less control node as the head of
    a cluster of one's own: 0)."""
    ready_timeout_s: float = 300.0
    stagger_s: float = 1.0
    down_hint: str = ""
    """The options of the matching `ray down` (the flag the user gave: --cluster-file,
    --name; empty when both are the defaults)."""

    @property
    def head_gpu_count(self) -> int:
        """GPUs the head declares: `head_gpus`, else `gpus_per_node`."""
        return self.gpus_per_node if self.head_gpus is None else self.head_gpus

    @property
    def blocking(self) -> bool:
        """Whether node commands stay for the cluster's life (mpi, srun)."""
        return self.launcher in BLOCKING_LAUNCHERS

    @property
    def temp_root(self) -> Path:
        """The cluster's temp root on every node (see `layout.cluster_root`)."""
        return cluster_root(self.name, record=str(self.cluster_file))

    @property
    def ports(self) -> RayPorts:
        """The cluster's ports: from --port-base, else from the name (a bad base raises)."""
        return ray_ports(self.port_base if self.port_base is not None else port_base_for(self.name))


def _node_start_argv(request: UpRequest, head_address: str | None) -> Callable[..., list[str]]:
    base = request.ports.base
    gpus = request.gpus_per_node if head_address else request.head_gpu_count

    def argv(hosts: Sequence[str], offset: int) -> list[str]:
        args = [
            "ray",
            "node-start",
            "--cluster",
            request.name,
            "--temp-root",
            str(request.temp_root),
            "--port-base",
            str(base),
            "--gpus",
            str(gpus),
            "--stagger",
            f"{request.stagger_s:g}",
            "--rank-offset",
            str(offset),
            "--down-hint",
            request.down_hint,
        ]
        if request.cpus_per_node is not None:
            args += ["--cpus", str(request.cpus_per_node)]
        if request.interface:
            args += ["--interface", request.interface]
        if head_address:
            args += ["--head-address", head_address]
        if request.blocking:
            args.append("--block")
        for host in hosts:
            args += ["--host", host]
        return hpcinfer_argv(*args)

    return argv


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _failed(running: Sequence[RunningLaunch]) -> list[str]:
    return [launch.failure() for launch in running if launch.poll() not in (None, 0)]


def _start_head(
    request: UpRequest,
    log_dir: Path,
    env: Mapping[str, str],
    deadline: float,
    started: list[RunningLaunch],
) -> str:
    """Start the head on hosts[0]; its GCS address ("ip:port")."""
    launches = node_launches(
        request.launcher,
        request.hosts[:1],
        _node_start_argv(request, None),
        env,
        whole_node_gpus=request.head_gpu_count,
    )
    (head,) = start_launches(launches, log_dir, env, "head", detached=request.blocking)
    started.append(head)
    while head.poll() is None and not head.records() and _remaining(deadline) > 0:
        time.sleep(0.1)
    if head.poll() is None and not head.records():
        raise RayClusterError(
            f"{request.hosts[0]}: the head did not start within the deadline "
            f"({request.ready_timeout_s:g} s); its output:\n{head.output()[-2000:]}"
        )
    if head.poll() not in (None, 0) or not head.records():
        raise RayClusterError("the head did not start: " + head.failure())
    return f"{head.records()[0]['address']}:{request.ports.gcs}"


def _take_down(
    request: UpRequest, started: Sequence[RunningLaunch], env: Mapping[str, str], log_dir: Path
) -> bool:
    """Stop whatever a failed `up` started; whether nothing of it can be left: every host
    its node start reached reported it stopped (one ssh never reached ran nothing).
    Blocking node commands end once their node's Ray is stopped; the others are first let
    finish (a remote `ray start` whose ssh was killed would go on and start Ray after the
    stop)."""
    wait_s = settle_s(request)
    if not request.blocking:
        settle(started, wait_s)
    stopped = stop_hosts(
        request.launcher, request.hosts, request.temp_root, env, log_dir, tolerate=True
    )
    settle(started, wait_s if request.blocking else 0.0)
    reached = {h for launch in started if not launch.unreachable() for h in launch.hosts}
    return reached <= set(stopped)


def settle_s(request: UpRequest) -> float:
    """How long node starts still running may take to end: the last worker may still be in
    its stagger sleep (hosts x stagger) and then run `ray start` (its own timeout)."""
    return max(SETTLE_S, request.stagger_s * len(request.hosts) + RAY_START_TIMEOUT_S)


class UpInterrupted(RayClusterError):
    """`ray up` got SIGTERM or SIGHUP (a cancelled job, a closed terminal)."""


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `UpInterrupted` once (later ones are ignored, so the
    take-down they start runs to its end); the old handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if raised:
            return
        raised.append(signum)
        raise UpInterrupted(
            f"`hpcinfer ray up` was stopped by {signal.Signals(signum).name}; "
            "what it started is taken down"
        )

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _starting_record(request: UpRequest) -> RayClusterFile:
    """The cluster file before anything starts: what `ray down` needs to stop it."""
    return RayClusterFile(
        name=request.name,
        state="starting",
        address="",  # the head has not started yet
        head_host=request.hosts[0],
        nodes=[],
        planned_hosts=list(request.hosts),
        gpus_per_node=request.gpus_per_node,
        head_gpus=request.head_gpus,
        cpus_per_node=request.cpus_per_node,
        ports=request.ports,
        temp_root=str(request.temp_root),
        interface=request.interface,
        launcher=request.launcher,
        created_at=now_text(),
    )


def expected_nodes(request: UpRequest) -> list[ExpectedNode]:
    """The hosts with the GPUs each must declare: the head its own count, the workers
    `gpus_per_node`."""
    head, *workers = request.hosts
    cpus = request.cpus_per_node
    return [ExpectedNode(head, request.head_gpu_count, cpus)] + [
        ExpectedNode(h, request.gpus_per_node, cpus) for h in workers
    ]


def _wait_ready(
    request: UpRequest, address: str, workers: Sequence[RunningLaunch], deadline: float
) -> list[LiveNode]:
    """Poll until ready; RayClusterError naming the hosts on a final problem or deadline."""
    expected = expected_nodes(request)
    problems: list[NodeProblem] = []
    nodes: list[LiveNode] = []
    while True:
        failed = _failed(workers)
        if failed:
            raise RayClusterError(
                "Ray did not start on every host:\n" + "\n".join(f"  {f}" for f in failed)
            )
        nodes = live_nodes(address, min(GCS_TIMEOUT_S, max(_remaining(deadline), 1.0)))
        problems = assess(expected, nodes, request.name)
        final = [p for p in problems if p.final]
        if final:
            raise RayClusterError(
                "the nodes do not run the same versions (a job would fail on them later):\n"
                + summary(final)
                + "\ninstall the same environment on every node"
            )
        reported = {str(r.get("host")) for w in workers for r in w.records()}
        if not problems and set(request.hosts[1:]) <= reported:
            problems = assess(expected, nodes, request.name, raylet_answers)
            if not problems:
                return nodes
        if _remaining(deadline) <= 0:
            raise RayClusterError(
                f"the Ray cluster was not ready within {request.ready_timeout_s:g} s:\n"
                + summary(
                    problems
                    or [
                        NodeProblem(h, "its node start has not reported")
                        for h in request.hosts[1:]
                        if h not in reported
                    ]
                )
            )
        time.sleep(POLL_S)


def _record(request: UpRequest, address: str, nodes: Sequence[LiveNode]) -> RayClusterFile:
    by_host = {n.host: n for n in nodes if n.alive}
    root = request.temp_root
    records = []
    for i, host in enumerate(request.hosts):
        node = next(n for label, n in by_host.items() if label == label_value(host))
        records.append(
            RayNodeRecord(
                host=host,
                address=node.address,
                gpus=node.gpus,
                cpus=node.cpus,
                temp_dir=str(node_temp_dir(root, host)),
                head=i == 0,
            )
        )
    return RayClusterFile(
        name=request.name,
        address=address,
        cluster_id=_cluster_id(address),
        head_host=request.hosts[0],
        nodes=records,
        gpus_per_node=request.gpus_per_node,
        head_gpus=request.head_gpus,
        cpus_per_node=request.cpus_per_node,
        ports=request.ports,
        temp_root=str(root),
        interface=request.interface,
        launcher=request.launcher,
        created_at=now_text(),
    )


def _cluster_id(address: str) -> str | None:
    try:
        return cluster_id_of(address)
    except RayClusterError:
        return None


def ray_up(
    request: UpRequest, env: Mapping[str, str] | None = None, note: Note | None = None
) -> RayClusterFile:
    """Start, verify and record the cluster; on failure nothing of it is left running."""
    env = dict(os.environ if env is None else env)
    with _signals_raise():
        create_cluster(_starting_record(request), request.cluster_file, request.down_hint)
        return _start_cluster(request, env, note or (lambda _text: None))


def _start_cluster(request: UpRequest, env: Mapping[str, str], say: Note) -> RayClusterFile:
    deadline = time.monotonic() + request.ready_timeout_s
    log_dir = launch_log_dir(request.cluster_file)
    started: list[RunningLaunch] = []
    try:
        shutil.rmtree(log_dir, ignore_errors=True)
        log_dir.mkdir(parents=True)
        say(f"starting the Ray head on {request.hosts[0]}")
        address = _start_head(request, log_dir, env, deadline, started)
        say(f"head at {address}; starting {len(request.hosts) - 1} worker node(s)")
        launches = node_launches(
            request.launcher,
            request.hosts[1:],
            _node_start_argv(request, address),
            env,
            whole_node_gpus=request.gpus_per_node,
        )
        workers = start_launches(launches, log_dir, env, "workers", detached=request.blocking)
        started += workers
        nodes = _wait_ready(request, address, workers, deadline)
        for launch in started:
            launch.finish()
        cluster = _record(request, address, nodes)
        save_cluster(cluster, request.cluster_file)
    except BaseException:
        say("taking down what was started")
        clean = _take_down(request, started, env, log_dir)
        if clean:  # nothing of it left: forget it (else `ray down` tries again)
            request.cluster_file.unlink(missing_ok=True)
            shutil.rmtree(log_dir, ignore_errors=True)  # what failed is in the error
        else:
            say(
                f"not every host answered; {request.cluster_file} is kept: "
                f"{f'hpcinfer ray down {request.down_hint}'.rstrip()} stops what is left"
            )
        raise
    if not request.blocking:
        shutil.rmtree(log_dir, ignore_errors=True)
    return cluster
