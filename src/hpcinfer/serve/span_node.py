"""One node's serve rank of a server spanning nodes (backend mp): vLLM's own multi-node mode.

Serve rank `rank` (one per node, in allocation order) is node rank `rank % nodes` of server
`rank // nodes`. Node rank 0 (the leader) picks the master port on its interface address,
publishes it (`span_files`), waits until every other node of its server has said who it is,
then runs `vllm serve ... --nnodes N --node-rank 0 --master-addr A --master-port P` as the
one endpoint of the server: its registry entry lists every node and device. The other nodes
run the same command with their node rank and `--headless` (engine workers, no API).

Failure never hangs: a headless rank that exits (or whose node stops its heartbeat) makes
the leader fail the server if it was starting, or mark it dead and stop it if it was
serving; a follower whose leader's server failed, died or stopped stops its headless rank.
Every node reads its own address from the chosen interface and gives vLLM, Gloo and NCCL
that address and interface (VLLM_HOST_IP, GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hpcinfer.cluster import PlacementPlan, cpu_affinity, plan_placement, resolve_profile
from hpcinfer.cluster.allocation import RankInfo, short_hostname
from hpcinfer.cluster.interfaces import NodeNetwork, node_network
from hpcinfer.core.endpoints_registry import DEAD, FAILED, STOPPED, read_registry
from hpcinfer.core.models import resolve_model
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import SpecError
from hpcinfer.logtail import log_tail
from hpcinfer.serve import span_files as files
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import EventSink, Fleet, ServerLaunch
from hpcinfer.serve.layout import ServerLayout
from hpcinfer.serve.plan import WILDCARD_HOSTS, log_dir
from hpcinfer.serve.ports import free_port, server_ports
from hpcinfer.serve.process import ServerProcess, stop_all
from hpcinfer.serve.server_argv import ServerArgs, Span, api_key, server_argv, server_env
from hpcinfer.spec import JobSpec

HEARTBEAT_S = 2.0
SILENT_AFTER_S = 45.0
"""A node whose heartbeat has not changed this long (by the reader's clock) is taken for lost."""
POLL_S = 0.5
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class SpanRank:
    """This serve rank's seat: which server, which node rank, on which network."""

    layout: ServerLayout
    rank: int
    server: int
    node_rank: int
    node: str
    network: NodeNetwork
    started_at: float
    launch: str | None

    @property
    def leader_rank(self) -> int:
        return self.server * self.layout.nodes


def span_rank(
    spec: JobSpec, layout: ServerLayout, rank: RankInfo | None, registry: Path
) -> SpanRank:
    """This rank's seat, or a SpecError when the ranks cannot make whole servers. A node
    after the first that cannot find its network says so in its state file first."""
    if rank is None:
        raise SpecError(
            f"a server spanning {layout.nodes} nodes ({layout.describe()}) needs one serve rank "
            "per node: pass --launcher mpi, srun or ssh (inside a PBS or Slurm job, or with "
            "--hostfile), or --nodes-per-server 1"
        )
    if rank.local_size != 1:
        raise SpecError(
            f"a server spanning nodes takes one serve rank per node, but {rank.local_size} "
            "ranks run on this node: start one per node (mpiexec -ppn 1, srun "
            "--ntasks-per-node 1), or let `hpcinfer serve --launcher ...` start them"
        )
    if rank.world_size % layout.nodes:
        raise SpecError(
            f"{rank.world_size} serve ranks (one per node) do not make whole servers of "
            f"{layout.nodes} nodes ({layout.describe()}): run on a multiple of {layout.nodes} "
            "nodes, or pass --nodes-per-server"
        )
    server, node_rank = layout.place_rank(rank.rank)
    seat = SpanRank(
        layout=layout,
        rank=rank.rank,
        server=server,
        node_rank=node_rank,
        node=short_hostname(socket.gethostname()),
        network=NodeNetwork("", None),  # found below
        started_at=time.time(),
        launch=files.launch_id(),
    )
    with failure_reported(registry, seat):
        network = node_network(
            spec.serve.interface or resolve_profile(spec.workers.profile).network_interface
        )
    return replace(seat, network=network)


@contextlib.contextmanager
def failure_reported(registry: Path, seat: SpanRank) -> Iterator[None]:
    """On a node after the first, an error before its heartbeat starts is written as its
    FAILED state, so the first node fails the server at once naming this node and why,
    instead of waiting out the ready timeout for a node that will never join."""
    try:
        yield
    except Exception as exc:
        if seat.node_rank > 0:
            state = files.MemberState(
                server=seat.server,
                node_rank=seat.node_rank,
                rank=seat.rank,
                node=seat.node,
                address=seat.network.address,
                devices=[],
                state=files.FAILED,
                error=str(exc) or type(exc).__name__,
                launch=seat.launch,
            )
            with contextlib.suppress(OSError):  # the error itself still reaches the user
                files.write_member(registry, state)
        raise


def network_env(network: NodeNetwork, master_addr: str) -> dict[str, str]:
    """What vLLM, Gloo and NCCL need to talk over the chosen network from this node."""
    env = {"VLLM_HOST_IP": network.address, "MASTER_ADDR": master_addr}
    if network.interface:
        env["GLOO_SOCKET_IFNAME"] = network.interface
        env["NCCL_SOCKET_IFNAME"] = network.interface
    return env


def node_placement(spec: JobSpec, layout: ServerLayout) -> PlacementPlan:
    """This node's share of the server: its ranks on the node's devices (on CPU, the node's
    cores split between them)."""
    profile = resolve_profile(spec.workers.profile)
    return plan_placement(profile, workers=1, tp=layout.ranks_per_node, mode=spec.workers.placement)


def _log(spec: JobSpec, cwd: Path, registry: Path, seat: SpanRank) -> Path:
    name = f"{seat.node}-server{seat.server}-node{seat.node_rank}.log"
    return log_dir(spec, cwd, registry) / name


def _argv_and_env(
    spec: JobSpec,
    cwd: Path,
    seat: SpanRank,
    rendezvous: files.Rendezvous,
    port: int,
    env: Mapping[str, str],
    key: str | None,
) -> tuple[list[str], dict[str, str], PlacementPlan]:
    plan = node_placement(spec, seat.layout)
    model_path, model_name = resolve_model(spec, cwd)
    args = ServerArgs(
        model_path,
        model_name,
        spec.serve.host,
        port,
        on_cpu=plan.profile.is_cpu,
        ranks_on_node=seat.layout.ranks_per_node,
    )
    span = Span(
        seat.layout.nodes,
        seat.node_rank,
        rendezvous.address,
        rendezvous.master_port,
        rendezvous.dp_rpc_port,
    )
    argv = server_argv(args, spec.engine, spec.serve, span=span)
    child_env = server_env(env, plan.placements[0].env, key)
    child_env.update(network_env(seat.network, rendezvous.address))
    return argv, child_env, plan


# --- the first node ---------------------------------------------------------------------


class PeerWatch:
    """The leader's view of its server's other nodes: `__call__` says why they cannot serve
    (one exited, or went silent), or None."""

    def __init__(self, registry: Path, seat: SpanRank, nonce: str | None = None) -> None:
        self._registry = registry
        self._seat = seat
        self._nonce = nonce
        self._beats: dict[int, tuple[int, float]] = {}

    def read(self, node_rank: int) -> files.MemberState | None:
        """Node `node_rank`'s state, when it joins this launch's rendezvous (`nonce`)."""
        seat = self._seat
        return files.read_member(
            self._registry, seat.server, node_rank, seat.launch, seat.started_at, self._nonce
        )

    def __call__(self) -> str | None:
        now = time.monotonic()
        for node_rank in range(1, self._seat.layout.nodes):
            member = self.read(node_rank)
            if member is None:
                continue  # being replaced right now; silence is caught below
            where = f"node rank {node_rank} ({member.node}, serve rank {member.rank})"
            if member.state in files.GONE:
                why = member.error or member.state
                return f"{where} headless vLLM {member.state}: {why} (log {member.log})"
            beat, seen = self._beats.get(node_rank, (-1, now))
            if member.beat != beat:
                self._beats[node_rank] = (member.beat, now)
            elif now - seen > SILENT_AFTER_S:
                return f"{where} silent for {now - seen:.0f}s (its serve rank is gone?)"
        return None


def await_members(
    registry: Path, seat: SpanRank, deadline: float, stop: StopSignal, nonce: str | None = None
) -> list[files.MemberState]:
    """Wait until every other node of this server has said who it is (echoing `nonce`);
    ServeError naming the missing node ranks at the deadline, or the one that failed."""
    watch = PeerWatch(registry, seat, nonce)
    missing = list(range(1, seat.layout.nodes))
    while True:
        found = {r: m for r in missing if (m := watch.read(r)) is not None}
        for node_rank, member in found.items():
            if member.state in files.GONE:
                log = f" (log {member.log})" if member.log else ""
                raise ServeError(
                    f"server {seat.server}: node rank {node_rank} ({member.node}, serve rank "
                    f"{member.rank}) {member.state} before the server started: "
                    f"{member.error}{log}"
                )
        if len(found) == len(missing):
            return [found[r] for r in missing]
        if stop.requested:
            raise ServeError(f"server {seat.server}: stopped while its nodes were joining")
        if time.monotonic() >= deadline:
            absent = [r for r in missing if r not in found]
            ranks = ", ".join(f"node rank {r} (serve rank {seat.leader_rank + r})" for r in absent)
            raise ServeError(
                f"server {seat.server}: {ranks} never joined within {_waited(seat)}: check "
                "that those ranks started (the launcher's output); the registry's folder "
                f"({registry.parent}) must be on a file system every node sees"
            )
        stop.wait(POLL_S)


def _waited(seat: SpanRank) -> str:
    return f"{time.time() - seat.started_at:.0f}s"


def plan_span_leader(
    spec: JobSpec,
    cwd: Path,
    registry: Path,
    seat: SpanRank,
    stop: StopSignal,
    *,
    write_to: Path,
    on_event: EventSink | None = None,
    env: Mapping[str, str] | None = None,
) -> Fleet:
    """Publish the rendezvous, wait for the other nodes, and plan the server's one launch."""
    env = os.environ if env is None else env
    serve = spec.serve
    key = api_key(serve, env)
    address = seat.network.address
    (port,) = server_ports(serve.host, serve.port, 1)
    dp_port = free_port(address) if serve.data_parallel_size > 1 else None
    rendezvous = files.Rendezvous(
        server=seat.server,
        node=seat.node,
        address=address,
        master_port=free_port(address),
        dp_rpc_port=dp_port,
        leader_rank=seat.rank,
        part=str(write_to),
        launch=seat.launch,
    )
    write_to.unlink(missing_ok=True)  # an earlier launch's state must not reach the others
    files.write_rendezvous(registry, rendezvous)
    began = time.monotonic()
    members = await_members(
        registry, seat, began + serve.ready_timeout_s, stop, rendezvous.nonce
    )
    # Only the members listed here start their headless ranks (not one that read an
    # earlier launch's rendezvous, which waits for this one's nonce instead).
    rendezvous = replace(rendezvous, accepted={str(m.node_rank): m.token for m in members})
    files.write_rendezvous(registry, rendezvous)
    ready_left = max(1.0, serve.ready_timeout_s - (time.monotonic() - began))  # one bound
    argv, child_env, plan = _argv_and_env(spec, cwd, seat, rendezvous, port.port, env, key)
    group = plan.placements[0].group
    mine = [f"{seat.node}:{label}" for label in group.labels]
    nodes = [
        {
            "node": seat.node,
            "address": address,
            "node_rank": 0,
            "rank": seat.rank,
            "devices": list(group.labels),
        }
    ]
    nodes += [
        {
            "node": m.node,
            "address": m.address,
            "node_rank": m.node_rank,
            "rank": m.rank,
            "devices": m.devices,
        }
        for m in members
    ]
    shown = address if serve.host in WILDCARD_HOSTS else serve.host
    cores = cpu_affinity(group)
    launch = ServerLaunch(
        index=seat.server,
        argv=argv,
        env=child_env,
        log=_log(spec, cwd, registry, seat),
        url=f"http://{shown}:{port.port}",
        model=resolve_model(spec, cwd)[1],
        node=seat.node,
        devices=tuple(mine + [f"{m.node}:{d}" for m in members for d in m.devices]),
        cores=frozenset(cores) if cores else None,
        rank=seat.rank,
        nodes=tuple(nodes),
        peers=PeerWatch(registry, seat, rendezvous.nonce),
        verify=True,
    )
    notes = list(plan.warnings)
    if port.note:
        notes.append(f"server {seat.server}: {port.note}")
    if plan.profile.is_cpu and serve.pipeline_parallel_size > 1:
        notes.append(
            "vLLM's CPU build crashes on the first request with pipeline stages (PP > 1, "
            "vLLM issue 32701): expect the verification request to fail"
        )
    return Fleet(
        [launch],
        write_to,
        api_key=key,
        ready_timeout_s=ready_left,
        on_event=on_event,
        notes=notes,
    )


# --- the other nodes --------------------------------------------------------------------


def await_rendezvous(
    registry: Path, seat: SpanRank, deadline: float, stop: StopSignal
) -> files.Rendezvous:
    return _poll_rendezvous(
        registry,
        seat,
        deadline,
        stop,
        lambda found: found,
        stopped="stopped before its first node published",
        late=f"did not publish its address within {_waited(seat)}",
        hint="; the registry's folder must be on a file system every node sees",
    )


def await_acceptance(
    registry: Path, seat: SpanRank, beat: _Heartbeat, deadline: float, stop: StopSignal
) -> files.Rendezvous:
    """Wait until the first node lists this node (its token) in the rendezvous it echoes; a
    newer rendezvous (this launch's, replacing an earlier one's) is echoed instead."""

    def accepted(found: files.Rendezvous) -> files.Rendezvous | None:
        if found.nonce != beat.state.nonce:
            beat.update(nonce=found.nonce)
            return None
        return found if found.accepts(beat.state) else None

    return _poll_rendezvous(
        registry,
        seat,
        deadline,
        stop,
        accepted,
        stopped="stopped while joining its first node",
        late=f"did not take node rank {seat.node_rank} in within {_waited(seat)}",
        hint="",
    )


def _poll_rendezvous(
    registry: Path,
    seat: SpanRank,
    deadline: float,
    stop: StopSignal,
    take: Callable[[files.Rendezvous], files.Rendezvous | None],
    *,
    stopped: str,
    late: str,
    hint: str,
) -> files.Rendezvous:
    """Read this launch's rendezvous every POLL_S until `take` returns it; a stop request or
    the deadline is a ServeError saying `stopped` or `late`."""
    while True:
        found = files.read_rendezvous(registry, seat.server, seat.launch, seat.started_at)
        taken = take(found) if found is not None else None
        if taken is not None:
            return taken
        if stop.requested:
            raise ServeError(f"server {seat.server}: {stopped}")
        if time.monotonic() >= deadline:
            raise ServeError(
                f"server {seat.server}: its first node (serve rank {seat.leader_rank}) {late} "
                f"({files.rendezvous_path(registry, seat.server)}): check that rank's output"
                f"{hint}"
            )
        stop.wait(POLL_S)


def leader_state(rendezvous: files.Rendezvous) -> str | None:
    """The state of the server as its first node last wrote it (None: not written yet)."""
    try:
        entries = read_registry(Path(rendezvous.part))
    except Exception:  # being replaced, or not there yet
        return None
    return entries[0].state if entries else None


@dataclass
class _Heartbeat:
    """Rewrites this node's state file every HEARTBEAT_S (beat + 1), until stopped."""

    registry: Path
    state: files.MemberState
    lock: threading.Lock
    done: threading.Event

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            self.update()

    def update(self, **changes: object) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(self.state, name, value)
            self.state.beat += 1
            with contextlib.suppress(OSError):  # the next beat writes again
                files.write_member(self.registry, self.state)


def run_follower(
    spec: JobSpec,
    cwd: Path,
    registry: Path,
    seat: SpanRank,
    stop: StopSignal,
    say: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> str:
    """Node rank >= 1: wait for the rendezvous, run the headless rank until a stop, the
    leader's server ending, or its own death (ServeError). Returns why it stopped."""
    env = os.environ if env is None else env
    deadline = time.monotonic() + spec.serve.ready_timeout_s
    with failure_reported(registry, seat):
        rendezvous = await_rendezvous(registry, seat, deadline, stop)
        group = node_placement(spec, seat.layout).placements[0].group
    log = _log(spec, cwd, registry, seat)
    state = files.MemberState(
        server=seat.server,
        node_rank=seat.node_rank,
        rank=seat.rank,
        node=seat.node,
        address=seat.network.address,
        devices=list(group.labels),
        log=str(log),
        launch=seat.launch,
        nonce=rendezvous.nonce,
    )
    beat = _Heartbeat(registry, state, threading.Lock(), threading.Event())
    beat.update()
    thread = threading.Thread(target=beat.run, name="span-heartbeat", daemon=True)
    thread.start()
    process: ServerProcess | None = None
    try:
        try:
            rendezvous = await_acceptance(registry, seat, beat, deadline, stop)
            # No API key: a headless rank serves no API (and ssh rightly does not forward it).
            argv, child_env, _ = _argv_and_env(spec, cwd, seat, rendezvous, 0, env, None)
        except Exception as exc:
            beat.update(state=files.FAILED, error=str(exc) or type(exc).__name__)
            raise
        say(
            f"server {seat.server} node rank {seat.node_rank}: joining {rendezvous.node} "
            f"({rendezvous.address}:{rendezvous.master_port}) headless, log {log}"
        )
        cores = cpu_affinity(group)
        try:
            process = ServerProcess(argv, child_env, log, cores)
        except OSError as exc:
            beat.update(state=files.FAILED, error=f"cannot start {argv[0]}: {exc}")
            raise ServeError(f"cannot start the headless rank: {exc}") from None
        beat.update(state=files.RUNNING, pid=process.pid)
        return _follow(process, rendezvous, beat, stop, seat)
    finally:
        if process is not None:
            stop_all([process], STOP_GRACE_S)
        beat.done.set()
        thread.join(timeout=5)
        if beat.state.state not in files.GONE and files.span_dir(registry).exists():
            # The server cannot work without this node: its first node must hear of it.
            # (Once rank 0 removed the parts folder at the end, nobody is left to tell.)
            beat.update(state=files.STOPPED)


def _follow(
    process: ServerProcess,
    rendezvous: files.Rendezvous,
    beat: _Heartbeat,
    stop: StopSignal,
    seat: SpanRank,
) -> str:
    while True:
        if stop.requested:
            return stop.reason or "stop requested"
        if not process.alive():
            text = process.exit_text()
            beat.update(state=files.DEAD, error=text)
            raise ServeError(
                f"server {seat.server} node rank {seat.node_rank}: the headless vLLM rank "
                f"{text} (log {process.log}):\n{log_tail(process.log)}"
            )
        ended = leader_state(rendezvous)
        if ended in (FAILED, DEAD, STOPPED):
            why = f"its server {ended} on {rendezvous.node}"
            if ended == STOPPED:
                return why
            raise ServeError(f"server {seat.server} node rank {seat.node_rank}: {why}")
        stop.wait(POLL_S)
