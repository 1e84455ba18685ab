"""One job over many ranks (`--launcher mpi|srun|ssh`).

Rank 0 is the coordinator: it plans the job, runs its own workers and accepts the workers
of every other rank over authenticated TCP (`joins.py`). Every other rank is an agent: it
starts its workers, bound by its local rank, pointed at rank 0, and waits for them. Workers
commit units to the shared output directory themselves, so a rank that dies loses only the
units it had not committed: the other ranks take them over, and a rerun finds the rest.

How ranks find rank 0 depends on the launcher: an MPI broadcast (mpi4py) under mpiexec, a
file in the output directory (tagged with the Slurm step or the launch id) under srun and
ssh, where there may be no MPI.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hpcinfer.cluster.allocation import RankInfo, read_rank
from hpcinfer.errors import HardwareError
from hpcinfer.launch.rank_env import LAUNCH_ID_ENV, RANK_ENV
from hpcinfer.outputs.atomic import write_text_atomic

COORDINATOR_HOST_ENV = "HPCINFER_COORDINATOR_HOST"
RENDEZVOUS_FILE = ".coordinator.json"
RENDEZVOUS_WAIT_S = 600.0
JOIN_WAIT_S = 900.0


@dataclass(frozen=True)
class RankContext:
    info: RankInfo
    launcher: str  # "mpi", "srun" or "ssh"

    @property
    def single_node(self) -> bool:
        return self.info.world_size == self.info.local_size


def current_rank(launcher: str, env: dict[str, str] | None = None) -> RankInfo | None:
    """This process's rank, or None when no launcher started it (then hpcinfer launches).

    hpcinfer's own variables (set by its ssh launcher) come first. An sbatch batch script
    has SLURM_PROCID=0 and SLURM_NTASKS=N without being a task of a step: it is not a rank.
    """
    env = dict(os.environ) if env is None else env
    if env.get("HPCINFER_RANK"):
        try:
            r, lr, ws, ls = (int(env[name]) for name in RANK_ENV)
        except (KeyError, ValueError):
            raise HardwareError(
                f"$HPCINFER_RANK is set but {', '.join(RANK_ENV[1:])} are not all integers; "
                "unset HPCINFER_RANK (it is hpcinfer's own launch variable)"
            ) from None
        return RankInfo(r, lr, ws, ls, "hpcinfer")
    if not (env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")) or _batch_step(env):
        # Outside a step, SLURM_PROCID describes the batch script, not a task.
        env = {k: v for k, v in env.items() if k != "SLURM_PROCID"}
    return read_rank(env)


def _batch_step(env: dict[str, str]) -> bool:
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    return step in ("4294967294", "batch", "4294967291")


def coordinator_hosts(ctx: RankContext) -> tuple[str, str]:
    """(address to bind, address other ranks dial). One node: loopback only."""
    if ctx.single_node:
        return "127.0.0.1", "127.0.0.1"
    advertise = os.environ.get(COORDINATOR_HOST_ENV) or socket.gethostname()
    return "0.0.0.0", advertise


# --- Rendezvous -------------------------------------------------------------------------


class Rendezvous(Protocol):
    def share(self, address: str | None, key: bytes | None) -> tuple[str, bytes]:
        """Rank 0 passes its address and key; every rank gets them back."""
        ...

    def finish(self) -> None:
        """Wait for every rank before leaving (MPI needs all ranks to finalize together)."""
        ...


class MpiRendezvous:
    """mpi4py: a broadcast from rank 0, and a barrier polled with sleeps at the end (a
    blocking MPI wait spins a core that the workers need)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise HardwareError(
                f"--launcher mpi needs mpi4py ({exc}); install it against your MPI "
                "(`pip install mpi4py`, or `pip install mpi4py mpich` on a laptop)"
            ) from None
        self.comm = MPI.COMM_WORLD

    def share(self, address: str | None, key: bytes | None) -> tuple[str, bytes]:
        shared = self.comm.bcast((address, key), root=0)
        return shared[0], shared[1]

    def finish(self) -> None:
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.05)


class FileRendezvous:
    """A file in the shared output directory, written atomically by rank 0 (mode 0600) and
    tagged with this launch's id, so a file left by an earlier launch is never used."""

    def __init__(self, out_dir: Path, launch_id: str, wait_s: float = RENDEZVOUS_WAIT_S):
        self.path = out_dir / RENDEZVOUS_FILE
        self.launch_id = launch_id
        self.wait_s = wait_s

    def share(self, address: str | None, key: bytes | None) -> tuple[str, bytes]:
        if address is not None and key is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            body = {"launch": self.launch_id, "address": address, "key": key.hex()}
            write_text_atomic(self.path, json.dumps(body), private=True)  # holds the key
            return address, key
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            found = self._read()
            if found is not None:
                return found
            time.sleep(0.2)
        raise HardwareError(
            f"rank 0 did not publish its address in {self.path} within {self.wait_s:.0f}s; "
            "check rank 0's output (is the output directory on a file system every node sees?)"
        )

    def _read(self) -> tuple[str, bytes] | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            body: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            if body["launch"] == self.launch_id:
                return str(body["address"]), bytes.fromhex(body["key"])
        return None

    def finish(self) -> None:
        if self.path.exists() and self._read() is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


def launch_id(env: dict[str, str] | None = None) -> str:
    """What every rank of one launch agrees on without talking: the Slurm step, or the id
    hpcinfer's own launcher exported."""
    env = dict(os.environ) if env is None else env
    if env.get(LAUNCH_ID_ENV):
        return env[LAUNCH_ID_ENV]
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
    if job and step:
        return f"slurm-{job}.{step}"
    raise HardwareError(
        "cannot tell this launch's ranks apart from an earlier launch's: set "
        f"${LAUNCH_ID_ENV} to the same fresh value on every rank (e.g. $(uuidgen))"
    )


def make_rendezvous(ctx: RankContext, out_dir: Path) -> Rendezvous:
    if ctx.launcher == "mpi":
        return MpiRendezvous()
    return FileRendezvous(out_dir, launch_id())
