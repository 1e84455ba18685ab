"""What runs on each node: start its Ray (`node-start`) or stop it (`node-stop`).

The launchers (ssh, mpiexec, srun, or nothing for this machine) run `hpcinfer ray
node-start|node-stop` once per node; the node finds out which host it is (told, or its
launcher rank in the host list), reads its own address, checks its ports, states its
versions and starts `ray start` in a session of its own, whose output goes to a log in
the node's temp dir (so ssh returns once Ray is up). It prints one JSON line on stdout
for the command that launched it; errors go to stderr, led by the host's name.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.cluster.allocation import read_rank
from hpcinfer.cluster.interfaces import node_network
from hpcinfer.errors import HardwareError, RayClusterError
from hpcinfer.raycluster.fingerprint import node_fingerprint, node_labels
from hpcinfer.raycluster.layout import make_private_root, node_temp_dir
from hpcinfer.raycluster.node_processes import (
    node_processes,
    stop_node_processes,
    write_node_record,
)
from hpcinfer.raycluster.ports import RayPorts
from hpcinfer.raycluster.start_argv import NodeStart, ray_start_argv, shown

START_LOG = "ray-start.log"
RAY_START_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class NodeStartRequest:
    """What `hpcinfer ray node-start` was told (the same on every node of one launch)."""

    cluster: str
    temp_root: Path
    ports: RayPorts
    gpus: int
    cpus: int | None
    interface: str | None
    head_address: str | None  # None: start the head
    stagger_s: float = 0.0  # this node waits rank x stagger before starting
    timeout_s: float = RAY_START_TIMEOUT_S
    down_hint: str | None = None  # the `ray down` options the user's `up` matches


def which_host(hosts: Sequence[str], env: Mapping[str, str]) -> tuple[str, int]:
    """(host, its index): the only host, else the launcher rank's entry of `hosts`."""
    if len(hosts) == 1:
        return hosts[0], 0
    rank = read_rank(env)
    if rank is None:
        raise HardwareError(
            f"{len(hosts)} hosts given but no launcher rank is set; pass one host per node "
            "command, or run it under mpiexec/srun with one rank per node"
        )
    if rank.rank >= len(hosts):
        raise HardwareError(f"launcher rank {rank.rank} has no host among {', '.join(hosts)}")
    return hosts[rank.rank], rank.rank


def ray_program() -> str:
    """The `ray` beside this Python (the same environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise HardwareError("Ray is not installed in this environment: pip install 'hpcinfer[ray]'")
    return found


def busy_ports(address: str, ports: RayPorts) -> list[str]:
    """The named ports something on this node already listens on (at `address`)."""
    busy = []
    for name, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                busy.append(f"{name} {port}")
    return busy


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _down_command(request: NodeStartRequest) -> str:
    """The `ray down` that stops it, with the option the user gave `up`."""
    hint = request.down_hint if request.down_hint is not None else f"--name {request.cluster}"
    return f"hpcinfer ray down {hint}".rstrip()


def node_start(request: NodeStartRequest, host: str, rank: int, env: Mapping[str, str]) -> dict:
    """Start this node's Ray; the record `up` reads back (host, address, temp_dir)."""
    temp_dir = node_temp_dir(request.temp_root, host)
    make_private_root(request.temp_root)
    if node_processes(temp_dir):
        raise RayClusterError(
            f"{host}: Ray of cluster {request.cluster!r} already runs in {temp_dir}; take it "
            f"down first: {_down_command(request)}"
        )
    address = node_network(request.interface).address
    busy = busy_ports(address, request.ports)
    if busy:
        raise RayClusterError(
            f"{host}: port(s) in use at {address}: {', '.join(busy)}; another cluster (or "
            "program) holds them: pass another --port-base"
        )
    labels = node_labels(host, request.cluster, node_fingerprint(env))
    start = NodeStart(
        ray=ray_program(),
        address=address,
        temp_dir=temp_dir,
        ports=request.ports,
        labels=labels,
        gpus=request.gpus,
        cpus=request.cpus,
        head_address=request.head_address,
    )
    if rank and request.stagger_s > 0:
        time.sleep(rank * request.stagger_s)
    _run_ray_start(ray_start_argv(start), temp_dir, host, request, env)
    return {"host": host, "address": address, "temp_dir": str(temp_dir)}


def _run_ray_start(
    argv: list[str], temp_dir: Path, host: str, request: NodeStartRequest, env: Mapping[str, str]
) -> None:
    """`ray start` in a session of its own (the node's processes stay in it), its output in
    the node's log; on failure whatever it started is stopped and the log's tail raised."""
    temp_dir.mkdir(mode=0o700, exist_ok=True)
    log = temp_dir / START_LOG
    with log.open("ab") as output:
        output.write(f"$ {shown(argv)}\n".encode())
        output.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
            start_new_session=True,
        )
    write_node_record(temp_dir, proc.pid, host, request.cluster)
    try:
        code = proc.wait(timeout=request.timeout_s)
        why = f"exit {code}"
    except subprocess.TimeoutExpired:
        code, why = -1, f"did not finish within {request.timeout_s:g} s"
    if code != 0:
        stop_node_processes(temp_dir)
        raise RayClusterError(
            f"{host}: `ray start` failed ({why}); the end of {log}:\n{_log_tail(log)}"
        )


def node_stop(temp_root: Path, host: str, grace_s: float) -> dict:
    """Stop this node's Ray processes (only those of its temp dir), then remove the dir;
    the record `down` reads back: "left" counts processes that survived SIGKILL (then
    "survivors" names them and the dir is kept)."""
    temp_dir = node_temp_dir(temp_root, host)
    stopped, left = stop_node_processes(temp_dir, grace_s)
    if left:
        survivors = ", ".join(f"{p.pid} ({p.command[:60]})" for p in left)
        return {"host": host, "stopped": stopped, "left": len(left), "survivors": survivors}
    shutil.rmtree(temp_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        temp_root.rmdir()  # the last node on a shared /tmp removes the root
    return {"host": host, "stopped": stopped, "left": 0}


HOLD_POLL_S = 1.0


def hold_node(temp_dir: Path, poll_s: float = HOLD_POLL_S) -> None:
    """Under a blocking launcher (mpi, srun): stay while the node's Ray runs, so the
    launcher's step (and with it Ray) lives on; return once `ray down` stopped it. SIGTERM,
    SIGINT or SIGHUP (a cancelled job, a failed `up` stopping its launch) stop the node's
    Ray first."""
    asked: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        asked.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    while not asked and node_processes(temp_dir):
        time.sleep(poll_s)
    if asked:
        stop_node_processes(temp_dir)
