"""The commands that start every rank of one hpcinfer command line (`--launcher mpi|srun|ssh`).

The ranks run the same command line and find themselves in the launcher's rank variables
(hpcinfer's own under ssh, see `rank_env`). Ranks per node: `workers.count`, else one per
device group of the hardware profile; nodes: the allocation (PBS, Slurm, --hostfile, or this
host). Used by `hpcinfer run` and `hpcinfer serve` alike; starting the commands is theirs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from hpcinfer.cluster import plan_placement, resolve_profile
from hpcinfer.cluster.allocation import Allocation
from hpcinfer.errors import HardwareError
from hpcinfer.launch.commands import LaunchRequest, mpiexec_mpich, mpiexec_openmpi, srun, ssh_fanout
from hpcinfer.launch.rank_env import LAUNCH_ID_ENV
from hpcinfer.spec import JobSpec

# Variables an ssh rank needs that a remote login shell would not have. Secrets (HF_TOKEN,
# API keys) are not among them: a command line is visible to every user of the node.
SSH_FORWARDED_ENV = (
    "HPCINFER_CACHE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "VIRTUAL_ENV",
    "PATH",
    "PYTHONPATH",  # the rank must import the same hpcinfer as the process that launched it
    "LD_LIBRARY_PATH",
)
SSH_ENV = "HPCINFER_SSH"

Runner = Callable[[Sequence[str]], str]


def _version_text(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def find_mpiexec() -> str:
    """mpiexec on PATH, else beside this Python (a venv with MPICH from PyPI)."""
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found:
        return found
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    raise HardwareError(
        "--launcher mpi: no mpiexec on PATH; load your site's MPI module, or "
        "`pip install mpich mpi4py` for a laptop"
    )


def mpi_flavor(mpiexec: str, runner: Runner = _version_text) -> str:
    """'openmpi' or 'mpich' (Hydra, and PALS, which takes the same -n/-ppn options)."""
    text = runner([mpiexec, "--version"])
    if "Open MPI" in text or "OpenRTE" in text or "open-mpi" in text:
        return "openmpi"
    return "mpich"


def ssh_command(env: dict[str, str]) -> list[str]:
    """The ssh argv prefix: $HPCINFER_SSH split as a shell would (a program and its options,
    e.g. "ssh -F /path/to/ssh_config"; quote a path with spaces), else plain `ssh`."""
    value = env.get(SSH_ENV, "")
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise HardwareError(
            f"${SSH_ENV} ({value!r}) is not a valid command line ({exc}); write it as in a "
            'shell, e.g. HPCINFER_SSH="ssh -F /path/to/ssh_config"'
        ) from None
    return argv or ["ssh"]


def ranks_per_node(spec: JobSpec) -> int:
    if spec.workers.count is not None:
        return spec.workers.count
    profile = resolve_profile(spec.workers.profile)
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    return len(plan_placement(profile, tp=tp, mode=mode).placements)


def launch_commands(
    spec: JobSpec,
    launcher: str,
    rank_command: list[str],
    allocation: Allocation,
    env: dict[str, str],
    runner: Runner = _version_text,
) -> list[list[str]]:
    """The command(s) that start every rank: one for mpiexec and srun, one per host for ssh."""
    hosts = allocation.hosts if allocation.source != "local" else ()
    nodes = max(len(hosts), 1)
    if launcher == "ssh":
        if not hosts:
            raise HardwareError(
                "--launcher ssh needs hosts: run inside a PBS or Slurm job, or pass --hostfile"
            )
        launch_id = env.get(LAUNCH_ID_ENV) or uuid.uuid4().hex  # the caller's, if it chose one
        forwarded = {k: env[k] for k in SSH_FORWARDED_ENV if env.get(k)}
        commands = []
        for rank, host in enumerate(hosts):
            rank_env = forwarded | {
                "HPCINFER_RANK": str(rank),
                "HPCINFER_LOCAL_RANK": "0",
                "HPCINFER_WORLD_SIZE": str(len(hosts)),
                "HPCINFER_LOCAL_SIZE": "1",
                LAUNCH_ID_ENV: launch_id,
            }
            req = LaunchRequest(
                rank_command, nodes=1, ranks_per_node=1, hosts=(host,), env=rank_env
            )
            commands.extend(ssh_fanout(req, ssh=ssh_command(env), cwd=os.getcwd()))
        return commands
    req = LaunchRequest(rank_command, nodes=nodes, ranks_per_node=ranks_per_node(spec), hosts=hosts)
    if launcher == "srun":
        if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
            raise HardwareError(
                "--launcher srun runs inside a Slurm allocation: use `salloc`, `sbatch`, or "
                "`hpcinfer submit --scheduler slurm`"
            )
        return [srun(req)]
    mpiexec = find_mpiexec()
    if mpi_flavor(mpiexec, runner) == "openmpi":
        argv = mpiexec_openmpi(req, as_root=os.geteuid() == 0, oversubscribe=not hosts)
    else:
        argv = mpiexec_mpich(req)
    return [[mpiexec, *argv[1:]]]
