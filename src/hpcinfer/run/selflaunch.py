"""`hpcinfer run --launcher mpi|srun|ssh` outside any rank: start the ranks, then wait.

The ranks run this very command line (same directory, same arguments) and find themselves
in the launcher's rank variables, so the user's own `mpiexec -n N hpcinfer run ...` and
hpcinfer's launch behave the same. Ranks per node: `workers.count`, else one per device
group of the hardware profile; nodes: the allocation (PBS, Slurm, --hostfile, or this host).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hpcinfer.cluster.allocation import read_allocation
from hpcinfer.errors import HardwareError
from hpcinfer.launch.outcome import wait_for_ranks
from hpcinfer.launch.rank_commands import launch_commands
from hpcinfer.spec import JobSpec


def self_launch(spec: JobSpec, launcher: str, argv: list[str], hostfile: Path | None) -> int:
    """Start the ranks running `hpcinfer <argv>` and return rank 0's exit code."""
    rank_command = [sys.executable, "-m", "hpcinfer", *argv]
    env = dict(os.environ)
    commands = launch_commands(
        spec, launcher, rank_command, read_allocation(hostfile=hostfile), env
    )
    # Ctrl-C reaches the launcher (same process group), which passes it to the ranks; rank 0
    # drains. This process only waits for the launcher's answer.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        procs = [subprocess.Popen(command) for command in commands]
        return wait_for_ranks(procs, commands, launcher)
    except FileNotFoundError as exc:
        raise HardwareError(f"cannot start the launcher: {exc}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
