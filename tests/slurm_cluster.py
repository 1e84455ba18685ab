"""A throwaway one-node Slurm cluster (munged, slurmctld, slurmd) for the integration tests.

Everything lives in one temporary directory: the munge key and socket, slurm.conf, state,
spool, pid and log files, on free ports, so it neither needs nor disturbs a system Slurm.
The daemons run in the foreground as children of the test process and are stopped by pid.
Clients find the cluster through ``SLURM_CONF`` in ``cluster.env``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.apt import apt_install
from tests.apt import missing_programs as _missing
from tests.harness import free_port

PROGRAMS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged")
APT_PACKAGES = ("slurm-wlm", "munge")


def missing_programs() -> list[str]:
    return _missing(PROGRAMS)


def install_slurm(timeout: float = 600) -> str | None:
    """apt-get install Slurm and munge (we are root in CI); the error text, or None."""
    return apt_install(APT_PACKAGES, PROGRAMS, timeout=timeout)


def _node_line() -> str:
    """This machine's real CPUs and memory, as slurmd itself reports them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def logs(self) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            path = self.root / "log" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {name}.log (last 3000 chars)\n{text[-3000:]}")
        return "\n".join(parts)

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T")
        return done.stdout.strip() if done.returncode == 0 else ""

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait for the queue to empty: slurmstepd and the job's
        processes outlive a stopped slurmd, so jobs must end before the daemons do."""
        if self.procs.get("slurmctld") is None or self.procs["slurmctld"].poll() is not None:
            return
        jobs = self.run("squeue", "-h", "-o", "%i").stdout.split()
        if jobs:
            self.run("scancel", *jobs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run("squeue", "-h", "-o", "%i")
            if done.returncode != 0 or not done.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self, timeout: float = 20) -> list[str]:
        """Cancel the jobs, then SIGTERM each daemon (slurmd first), SIGKILL if it lingers;
        returns the names of daemons still alive."""
        self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return [name for name, proc in self.procs.items() if _alive(proc.pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _write_conf(root: Path, node_line: str, node: str) -> Path:
    munge_socket = root / "munge" / "munge.socket.2"
    lines = [
        "ClusterName=hpcinfertest",
        f"SlurmctldHost={node}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MinJobAge=600",
        "KillWait=5",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"{node_line} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def _start_munged(root: Path, log: Path) -> subprocess.Popen[bytes]:
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    cmd = [
        "munged",
        "--foreground",
        "--force",
        f"--key-file={key}",
        f"--socket={root / 'munge' / 'munge.socket.2'}",
        f"--pid-file={root / 'run' / 'munged.pid'}",
        f"--log-file={log}",
        f"--seed-file={root / 'munge' / 'munged.seed'}",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start_cluster(root: Path, ready_timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd; return once sinfo shows the node idle."""
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    node = socket.gethostname().split(".", 1)[0]
    node_line = _node_line()
    conf = _write_conf(root, node_line, node)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root=root, conf=conf, node=node, env=env)
    devnull = subprocess.DEVNULL
    cluster.procs["munged"] = _start_munged(root, root / "log" / "munged.log")
    _wait_for(lambda: (root / "munge" / "munge.socket.2").exists(), 15, cluster, "munged")
    cluster.procs["slurmctld"] = subprocess.Popen(
        ["slurmctld", "-D", "-c", "-i", "-f", str(conf)], env=env, stdout=devnull, stderr=devnull
    )
    cluster.procs["slurmd"] = subprocess.Popen(
        ["slurmd", "-D", "-f", str(conf), "-N", node], env=env, stdout=devnull, stderr=devnull
    )
    _wait_for(lambda: cluster.node_state() == "idle", ready_timeout, cluster, "node idle")
    return cluster


def _wait_for(check: object, timeout: float, cluster: SlurmCluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(
        f"Slurm test cluster: gave up waiting for {what} (exited: {dead or 'none'})\n"
        + cluster.logs()
    )
