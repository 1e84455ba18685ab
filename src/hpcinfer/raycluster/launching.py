"""Running one node command on a set of hosts through the existing launchers.

ssh: one command per host (hpcinfer's fan-out; `$HPCINFER_SSH` may hold options such as
`ssh -F config`); mpi and srun: one launch over all the hosts, one rank per node, each
node finding its host by its rank; local: the command on this machine (one host). Every
launch is a `core.processes` child (own group, guard, parent-death signal), its output in
one log, so a killed `ray up` takes its launchers along and a launch past its deadline is
stopped. A node prints one line `RECORD_PREFIX {json}`; the rest of its output is kept
for the error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.core.processes import Child, spawn, start_process
from hpcinfer.errors import HardwareError, RayClusterError
from hpcinfer.launch.commands import LaunchRequest, mpiexec_mpich, mpiexec_openmpi, srun, ssh_fanout
from hpcinfer.launch.rank_commands import (
    SSH_FORWARDED_ENV,
    find_mpiexec,
    mpi_flavor,
    ssh_command,
)

RECORD_PREFIX = "hpcinfer-ray-node:"
LAUNCHERS = ("ssh", "mpi", "srun", "local")
BLOCKING_LAUNCHERS = ("mpi", "srun")
"""Launchers whose node commands must stay for the cluster's life: Slurm ends a step's
processes with the step (and an MPI launcher's may do the same), Ray's daemons included."""
FORWARDED_ENV = SSH_FORWARDED_ENV
"""What an ssh node command gets from here (a remote login shell lacks it, PYTHONPATH
included); never $HPCINFER_RAY_FINGERPRINT, which is each node's own."""
STOP_GRACE_S = 5.0
SSH_UNREACHABLE = 255

NodeArgv = Callable[[Sequence[str], int], list[str]]
"""(hosts this command covers, rank offset) -> the `hpcinfer ray node-...` argv."""


def hpcinfer_argv(*args: str) -> list[str]:
    """`python -m hpcinfer ...` with this very Python (the job's environment)."""
    return [sys.executable, "-m", "hpcinfer", *args]


@dataclass(frozen=True)
class NodeLaunch:
    """One launch command and the hosts it covers."""

    hosts: tuple[str, ...]
    argv: list[str]
    ssh: bool = False  # one ssh per host: exit 255 means it never reached the host


def node_launches(
    launcher: str,
    hosts: Sequence[str],
    node_argv: NodeArgv,
    env: Mapping[str, str],
    cwd: str | None = None,
    *,
    whole_node_gpus: int | None = None,
) -> list[NodeLaunch]:
    """The launch command(s) that run the node command once on every host of `hosts`.
    `whole_node_gpus` (the node starts, which hold Ray): under srun the step gets the whole
    node, its CPUs and that many GPUs, for Ray's workers run inside it."""
    if not hosts:
        return []
    if launcher == "ssh":
        forwarded = {k: env[k] for k in FORWARDED_ENV if env.get(k)}
        ssh = ssh_command(dict(env))
        launches = []
        for offset, host in enumerate(hosts):
            req = LaunchRequest(
                node_argv([host], offset), nodes=1, ranks_per_node=1, hosts=(host,), env=forwarded
            )
            command = ssh_fanout(req, ssh=ssh, cwd=cwd or os.getcwd())[0]
            launches.append(NodeLaunch((host,), command, ssh=True))
        return launches
    if launcher == "local":
        if len(hosts) != 1:
            raise HardwareError(
                f"--launcher local starts Ray on this machine only, not on {len(hosts)} hosts; "
                "use ssh, mpi or srun"
            )
        return [NodeLaunch(tuple(hosts), node_argv(hosts, 0))]
    req = LaunchRequest(node_argv(hosts, 0), nodes=len(hosts), ranks_per_node=1, hosts=tuple(hosts))
    if launcher == "srun":
        if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
            raise HardwareError("--launcher srun runs inside a Slurm allocation (salloc, sbatch)")
        argv = srun(req)  # --overlap: ray down's step runs beside the node commands' step
        options = ["--overlap"]
        if whole_node_gpus is not None:
            options += srun_whole_node(env, whole_node_gpus)
        return [NodeLaunch(tuple(hosts), [argv[0], *options, *argv[1:]])]
    if launcher == "mpi":
        mpiexec = find_mpiexec()
        if mpi_flavor(mpiexec) == "openmpi":
            argv = mpiexec_openmpi(req, as_root=os.geteuid() == 0)
        else:
            argv = mpiexec_mpich(req)
        return [NodeLaunch(tuple(hosts), [mpiexec, *argv[1:]])]
    raise HardwareError(f"--launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")


def srun_whole_node(env: Mapping[str, str], gpus_per_node: int) -> list[str]:
    """srun options giving a step the whole node: every CPU of the allocation's node
    ($SLURM_CPUS_ON_NODE; a step otherwise gets one CPU, and Ray's workers, which run in
    it, would share it) and the node's GPUs; never --exact, which would pin it to those."""
    options = []
    cpus = env.get("SLURM_CPUS_ON_NODE", "").strip()
    if cpus.isdigit() and int(cpus) > 0:
        options.append(f"--cpus-per-task={cpus}")
    if gpus_per_node > 0:
        options.append(f"--gpus-per-node={gpus_per_node}")
    return options


class RunningLaunch:
    """A started launch: its process, its log, and what its nodes reported.

    A blocking launch (mpi, srun: their node commands run as long as the node's Ray) is
    `detached`: its own session, no guard and no parent-death signal, so it outlives `ray
    up`; it ends when the node's Ray is stopped (`ray down`)."""

    def __init__(
        self, launch: NodeLaunch, log: Path, env: Mapping[str, str], detached: bool = False
    ) -> None:
        self.launch = launch
        self.log = log
        self.detached = detached
        self._child: Child | None = None
        try:
            if detached:
                self.proc = start_process(
                    launch.argv, env=env, log=log, fresh_log=True, death_signal=0
                )
            else:
                self._child = spawn(launch.argv, env=env, log=log, fresh_log=True)
                self.proc = self._child.proc
        except OSError as exc:
            raise RayClusterError(
                f"{', '.join(launch.hosts)}: cannot start {launch.argv[0]!r}: {exc}"
            ) from None

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.launch.hosts

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """SIGTERM its process group, a bounded wait, SIGKILL; reaped."""
        if self._child is not None:
            self._child.stop(STOP_GRACE_S)
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
                return

    def finish(self) -> None:
        """After it exited: reap its process group and stand its guard down (a detached
        launch is left alone: it runs as long as its nodes' Ray)."""
        if self._child is not None:
            self._child.stop(STOP_GRACE_S, first_signal=None)

    def exit_text(self) -> str:
        code = self.poll()
        return "running" if code is None else f"exit code {code}"

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def records(self) -> list[dict]:
        """The JSON records its nodes printed."""
        found = []
        for line in self.output().splitlines():
            if line.startswith(RECORD_PREFIX):
                try:
                    found.append(json.loads(line[len(RECORD_PREFIX) :]))
                except json.JSONDecodeError:
                    continue
        return found

    def unreachable(self) -> bool:
        """Whether it is one ssh that could not reach its host (it ran nothing there)."""
        return self.poll() == SSH_UNREACHABLE and len(self.hosts) == 1 and self.launch.ssh

    def failure(self, tail_lines: int = 12) -> str:
        """Why it failed, naming its hosts: ssh's 'unreachable' or the output's tail."""
        hosts = ", ".join(self.hosts)
        if self.unreachable():
            return (
                f"{hosts}: ssh could not reach it (exit {SSH_UNREACHABLE}); check the host name "
                f"and that `ssh -o BatchMode=yes {hosts} true` works"
            )
        lines = [line for line in self.output().splitlines() if not line.startswith(RECORD_PREFIX)]
        tail = "\n".join(f"    {line}" for line in lines[-tail_lines:])
        return f"{hosts}: the node command exited with {self.exit_text()}:\n{tail}"


def start_launches(
    launches: Sequence[NodeLaunch],
    log_dir: Path,
    env: Mapping[str, str],
    tag: str,
    detached: bool = False,
) -> list[RunningLaunch]:
    """Start every launch at once, each logging to `log_dir/<tag>-<i>.log`."""
    running: list[RunningLaunch] = []
    try:
        for i, launch in enumerate(launches):
            running.append(RunningLaunch(launch, log_dir / f"{tag}-{i}.log", env, detached))
    except BaseException:
        for started in running:
            started.stop()
        raise
    return running


def settle(running: Sequence[RunningLaunch], seconds: float) -> None:
    """Let the launches still running end by themselves for up to `seconds`, then stop
    the rest; every one is reaped."""
    deadline = time.monotonic() + seconds
    while any(launch.poll() is None for launch in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for launch in running:
        if launch.poll() is None:
            launch.stop()
        else:
            launch.finish()
