"""The scheduler's lines at the top of a job script (#PBS / #SBATCH), one function each.

Options the chosen scheduler does not take are refused by name instead of being dropped, so
a spec written for Slurm does not silently lose its partition when submitted to PBS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcinfer.errors import SpecError
from hpcinfer.submit import checks
from hpcinfer.submit.options import JobScriptSpec, Scheduler
from hpcinfer.submit.walltime import pbs_walltime, slurm_time

PBS_LOG = "pbs.out"  # PBS Pro cannot put the job id in -o; each job replaces it
SLURM_LOG = "slurm-%j.out"


@dataclass(frozen=True)
class Request:
    """What the directives ask for, with the defaults already resolved."""

    job: JobScriptSpec
    ranks_per_node: int
    gpus_per_node: int
    log_dir: Path  # where the scheduler writes the job's stdout and stderr

    def log_path(self, name: str) -> str:
        """A file in log_dir, checked for the directive parsers (the name is ours)."""
        return checks.check_directive_path(str(self.log_dir), "job directory") + "/" + name


def _refuse(job: JobScriptSpec, fields: dict[str, str], scheduler: Scheduler) -> None:
    for name, instead in fields.items():
        if getattr(job, name):
            raise SpecError(
                f"job.{name} is not a {scheduler.upper()} option; {instead}, or submit with "
                f"--scheduler {'slurm' if scheduler == 'pbs' else 'pbs'}"
            )


def pbs_directives(req: Request) -> list[str]:
    """PBS Pro: select/place chunks, walltime, account, queue, file systems, joined output."""
    job = req.job
    _refuse(
        job,
        {
            "partition": "PBS uses job.queue",
            "qos": "drop job.qos",
            "constraint": "put PBS resources in job.extra_directives ('-l ...')",
            "gpus_per_node": "PBS gives each chunk its node's GPUs; drop job.gpus_per_node",
        },
        "pbs",
    )
    lines = [f"-N {job.name}", f"-l select={job.nodes}", "-l place=scatter"]
    seconds = job.walltime_seconds()
    if seconds is not None:
        lines.append(f"-l walltime={pbs_walltime(seconds)}")
    if job.account:
        lines.append(f"-A {job.account}")
    if job.queue:
        lines.append(f"-q {job.queue}")
    if job.filesystems:
        lines.append(f"-l filesystems={':'.join(job.filesystems)}")
    lines += ["-j oe", f"-o {req.log_path(PBS_LOG)}"]
    return [f"#PBS {line}" for line in [*lines, *job.extra_directives]]


def slurm_directives(req: Request) -> list[str]:
    """Slurm: nodes, tasks and GPUs per node, time, account, partition, QOS, constraint."""
    job = req.job
    _refuse(job, {"filesystems": "drop job.filesystems"}, "slurm")
    lines = [
        f"--job-name={job.name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={req.ranks_per_node}",
    ]
    if req.gpus_per_node:
        lines.append(f"--gpus-per-node={req.gpus_per_node}")
    seconds = job.walltime_seconds()
    if seconds is not None:
        lines.append(f"--time={slurm_time(seconds)}")
    if job.account:
        lines.append(f"--account={job.account}")
    partition = job.partition or job.queue
    if partition:
        lines.append(f"--partition={partition}")
    if job.qos:
        lines.append(f"--qos={job.qos}")
    if job.constraint:
        lines.append(f"--constraint={job.constraint}")
    lines.append(f"--output={req.log_path(SLURM_LOG)}")
    return [f"#SBATCH {line}" for line in [*lines, *job.extra_directives]]
