"""Starting and reaping run's workers: `hpcinfer.run.worker` processes bound to a placement.

Each worker starts through `hpcinfer.core.processes`: its own process group, its cores set
and the parent-death signal armed before exec. The signal is SIGKILL, since a worker ignores
SIGTERM and SIGINT (the coordinator decides when the job drains).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hpcinfer.cluster import cpu_affinity
from hpcinfer.cluster.placement import Placement
from hpcinfer.core.processes import Child, bound_env, spawn, stop_all
from hpcinfer.run.coordinator import WorkerHandle
from hpcinfer.run.worker import COORDINATOR_KEY_ENV, WORKER_HELLO_ENV


def _worker_process(
    placement: Placement,
    engine_vars: Mapping[str, str],
    log: Path,
    argv: list[str],
    base_env: Mapping[str, str],
    pass_fds: tuple[int, ...] = (),
) -> Child:
    """A worker process bound to its placement's devices, logging to `log`."""
    return spawn(
        [sys.executable, "-m", "hpcinfer.run.worker", *argv],
        env=bound_env(base_env, placement.env, engine_vars),
        log=log,
        cores=cpu_affinity(placement.group),
        pass_fds=pass_fds,
        death_signal=signal.SIGKILL,
    )


def spawn_worker(
    placement: Placement, engine_vars: Mapping[str, str], log: Path, *, index: int
) -> WorkerHandle:
    """Start a worker on a socket to this process; its configuration is sent once the job is
    planned."""
    parent_sock, child_sock = socket.socketpair()
    proc = _worker_process(
        placement,
        engine_vars,
        log,
        [str(child_sock.fileno())],
        os.environ,
        pass_fds=(child_sock.fileno(),),
    )
    child_sock.close()
    return WorkerHandle(
        index=index,
        proc=proc,
        conn=Connection(parent_sock.detach()),
        log=log,
        host=socket.gethostname(),
        devices=[d.label for d in placement.group.devices],
    )


def spawn_remote_worker(
    placement: Placement,
    engine_vars: Mapping[str, str],
    log: Path,
    *,
    address: str,
    key: bytes,
    hello: dict[str, Any],
) -> Child:
    """Start a worker that dials the coordinator rank; the key travels in its environment
    (never on a command line, where `ps` would show it)."""
    env = dict(os.environ)
    env[COORDINATOR_KEY_ENV] = key.hex()
    devices = [d.label for d in placement.group.devices]
    env[WORKER_HELLO_ENV] = json.dumps(dict(hello, devices=devices))
    return _worker_process(placement, engine_vars, log, ["--connect", address], env)


def reap_workers(handles: Sequence[WorkerHandle], grace_s: float) -> None:
    """Wait for workers to exit (they close their engines), then kill any that hang, and
    whatever they left in their process groups."""
    stop_all([h.proc for h in handles if h.proc is not None], grace_s, first_signal=None)
    for handle in handles:
        handle.conn.close()
