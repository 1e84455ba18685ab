"""`cluster compute CMD` and `cluster control CMD`: one shell command on the nodes.

compute: on every compute node at once (at most MAX_PARALLEL ssh sessions), each node's
output and exit status kept apart; control: on the control node, in the project folder
(locally when this is the control node). Each ssh is a `core.processes` child, so an
interrupted command leaves no ssh behind, and the remote command is `session_bound`: it ends
with its ssh session rather than running on unseen; a stop request stops them all.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from hpcinfer.core.processes import Child, spawn, stop_all
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import StoppedError
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.cluster_file import Node
from hpcinfer.provision.reach import (
    SSH_UNREACHABLE,
    in_workdir,
    session_bound,
    ssh_argv,
    target,
    workdir,
)

MAX_PARALLEL = 16
NOT_STARTED = 127
"""A host's exit code when its ssh (or bash) could not be started, as a shell says it."""
STOP_GRACE_S = 5.0
POLL_S = 0.05


class HostRun(BaseModel):
    """One node's answer to the command."""

    host: str
    exit_code: int
    output: str  # stdout and stderr as they came
    reached: bool = True  # False: ssh could not reach the node (nothing ran there)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class FanoutResult(BaseModel):
    """Every node's answer, in the cluster file's order."""

    cluster: str
    command: str
    hosts: list[HostRun]

    @property
    def failed(self) -> list[str]:
        return [h.host for h in self.hosts if not h.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def problem(self) -> str:
        """The failed hosts, each with its exit status ('' when every one succeeded)."""
        if self.ok:
            return ""
        parts = [
            f"{h.host} (exit {h.exit_code}{'' if h.reached else ': ssh could not reach it'})"
            for h in self.hosts
            if not h.ok
        ]
        return (
            f"`{self.command}` failed on {len(parts)} of {len(self.hosts)} node(s): "
            + ", ".join(parts)
        )


class _Runs:
    """The children started so far, so that a stop reaches every one."""

    def __init__(self, stop: StopSignal | None) -> None:
        self.lock = threading.Lock()
        self.children: list[Child] = []
        self.stop = stop

    def run(
        self,
        argv: list[str],
        env: Mapping[str, str],
        log: Path,
        cwd: Path | None,
        *,
        hold_stdin: bool = True,
    ) -> int:
        """Run `argv` to its end (or the stop). `hold_stdin`: its stdin a pipe held open
        meanwhile (a remote command started `session_bound` ends when it closes); else
        /dev/null, so a local command that reads stdin sees its end instead of waiting."""
        read_end, write_end = os.pipe() if hold_stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        try:
            with self.lock:
                if self.stop is not None and self.stop.requested:
                    return -1
                try:
                    child = spawn(argv, env=env, log=log, fresh_log=True, cwd=cwd, stdin=read_end)
                except OSError as exc:
                    log.write_text(f"cannot start {argv[0]!r}: {exc.strerror or exc}\n")
                    return NOT_STARTED
                self.children.append(child)
            os.close(read_end)
            read_end = -1
            while child.alive():
                if self.stop is not None and self.stop.requested:
                    break
                time.sleep(POLL_S)
        finally:
            for end in (read_end, write_end):
                if end >= 0:
                    os.close(end)
        child.stop(STOP_GRACE_S, first_signal=signal.SIGTERM if child.alive() else None)
        code = child.returncode
        return -1 if code is None else code


def _read(log: Path) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def run_on_compute(
    cluster: Cluster, command: str, env: Mapping[str, str], *, stop: StopSignal | None = None
) -> FanoutResult:
    """`command` (a shell command line) on every compute node, over ssh, in parallel."""
    runs = _Runs(stop)
    nodes = cluster.file.compute
    with tempfile.TemporaryDirectory(prefix="hpcinfer-compute-") as temp:

        def one(index_node: tuple[int, Node]) -> HostRun:
            index, node = index_node
            log = Path(temp) / f"{index}.log"
            remote = session_bound(command)
            code = runs.run(ssh_argv(cluster, node, remote, env), env, log, None)
            return HostRun(host=node.name, exit_code=code, output=_read(log),
                           reached=code != SSH_UNREACHABLE)  # fmt: skip

        try:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
                hosts = list(pool.map(one, enumerate(nodes)))
        finally:
            stop_all(runs.children, STOP_GRACE_S)
    if stop is not None and stop.requested:
        raise StoppedError(f"cluster compute stopped: {stop.reason}")
    return FanoutResult(cluster=cluster.file.label, command=command, hosts=hosts)


def run_on_control(
    cluster: Cluster,
    command: str,
    env: Mapping[str, str],
    *,
    here: bool,
    stop: StopSignal | None = None,
) -> FanoutResult:
    """`command` on the control node in the project folder: here with bash (`here`: this
    is the control node), else over ssh."""
    runs = _Runs(stop)
    node = cluster.file.control
    with tempfile.TemporaryDirectory(prefix="hpcinfer-control-") as temp:
        log = Path(temp) / "control.log"
        try:
            if here:
                folder = Path(os.path.expanduser("~")) / workdir(cluster)
                folder.mkdir(parents=True, exist_ok=True)
                code = runs.run(["bash", "-c", command], env, log, folder, hold_stdin=False)
            else:
                remote = in_workdir(cluster, session_bound(command))
                code = runs.run(ssh_argv(cluster, node, remote, env), env, log, None)
        finally:
            stop_all(runs.children, STOP_GRACE_S)
        output = _read(log)
    if stop is not None and stop.requested:
        raise StoppedError(f"cluster control stopped: {stop.reason}")
    reached = here or code != SSH_UNREACHABLE
    if not reached:
        output += f"\nssh could not reach {target(cluster, node)}"
    return FanoutResult(
        cluster=cluster.file.label,
        command=command,
        hosts=[HostRun(host=node.name, exit_code=code, output=output, reached=reached)],
    )
