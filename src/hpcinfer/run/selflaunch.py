"""`hpcinfer run --launcher mpi|srun|ssh` outside any rank: start the ranks, then wait.

The ranks run this very command line (same directory, same arguments) and find themselves
in the launcher's rank variables, so the user's own `mpiexec -n N hpcinfer run ...` and
hpcinfer's launch behave the same. Ranks per node: `workers.count`, else one per device
group of the hardware profile; nodes: the allocation (PBS, Slurm, --hostfile, or this host).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpcinfer.cluster.allocation import read_allocation
from hpcinfer.core.stop import StopSignal
from hpcinfer.launch.outcome import run_rank_commands
from hpcinfer.launch.rank_commands import launch_commands
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
    rank_command = [sys.executable, "-m", "hpcinfer", *argv]
    commands = launch_commands(
        spec, launcher, rank_command, read_allocation(hostfile=hostfile), dict(os.environ)
    )
    return run_rank_commands(commands, launcher, stop)
