"""`hpcinfer run --launcher mpi|srun|ssh` outside any rank: start the ranks, then wait.

The ranks run this very command line (same directory, same arguments) and find themselves
in the launcher's rank variables, so the user's own `mpiexec -n N hpcinfer run ...` and
hpcinfer's launch behave the same. Ranks per node: `workers.count`, else one per device
group of the hardware profile; nodes: the allocation (PBS, Slurm, --hostfile, or this host).
"""

from __future__ import annotations

from pathlib import Path

from hpcinfer.cluster.allocation import read_allocation
from hpcinfer.core.stop import StopSignal
from hpcinfer.launch.outcome import launch_self
from hpcinfer.spec import JobSpec


def self_launch(
    spec: JobSpec,
    launcher: str,
    argv: list[str],
    hostfile: Path | None,
    stop: StopSignal | None = None,
) -> int:
    """Start the ranks running `hpcinfer <argv>` and return rank 0's exit code. A stop
    request reaches the ranks through their launchers (rank 0 drains, then aborts)."""
    return launch_self(spec, launcher, argv, read_allocation(hostfile=hostfile), stop)
