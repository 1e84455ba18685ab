"""Launch commands: how ranks are started (mpiexec, mpirun, srun, ssh, or locally)."""

from hpcinfer.launch.commands import (
    LAUNCHERS,
    Launcher,
    LaunchRequest,
    local,
    mpiexec_mpich,
    mpiexec_openmpi,
    remote_command,
    srun,
    ssh_fanout,
)

__all__ = [
    "LAUNCHERS",
    "LaunchRequest",
    "Launcher",
    "local",
    "mpiexec_mpich",
    "mpiexec_openmpi",
    "remote_command",
    "srun",
    "ssh_fanout",
]
