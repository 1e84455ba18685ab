"""The scheduler seam: what a batch scheduler is to hpcinfer, as one base class.

A scheduler (``submit.pbs``, ``submit.slurm``) is one subclass in one module: the lines at
the top of its job scripts, the launcher that starts ranks inside a job, its template, and
submit, status and cancel with its job-state mapping. Generic code (``submit.render``, the
CLI) looks it up by name in ``submit.schedulers`` and never branches on the name.

Every scheduler command goes through one injectable runner (argv in, exit code and output
back), so tests stand in for qsub/sbatch without a cluster and nothing here builds a shell
line. Job ids arrive from users, so they are checked before they reach a command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hpcinfer.errors import HpcinferError, SpecError
from hpcinfer.launch import LaunchRequest
from hpcinfer.submit.directives import Request
from hpcinfer.submit.states import JobStatus

COMMAND_TIMEOUT_S = 60.0
RESUBMITS_VAR = "HPCINFER_RESUBMITS_LEFT"
# Slurm: 123, 123_4 (array task), 123+1 (het job); PBS: 123.server, 123[].server, q@srv.
JOB_ID = re.compile(r"[0-9][A-Za-z0-9_.+\[\]@-]*")


class SchedulerError(HpcinferError):
    """A scheduler command failed or answered what hpcinfer cannot read."""

    exit_code = 1


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def output(self) -> str:
        return (self.stderr.strip() or self.stdout.strip())[-2000:]


CommandRunner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run one scheduler command (no shell); a missing program is an error naming the fix."""
    if shutil.which(argv[0]) is None:
        raise SchedulerError(
            f"{argv[0]} is not on PATH; run hpcinfer on a login node of the cluster, or load "
            "the scheduler's module"
        )
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise SchedulerError(
            f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:.0f} s; the scheduler may be "
            "busy, try again"
        ) from None
    return CommandResult(list(argv), done.returncode, done.stdout, done.stderr)


def check_job_id(job_id: str) -> str:
    value = job_id.strip()
    if not JOB_ID.fullmatch(value):
        raise SpecError(
            f"{job_id!r} is not a job id; give the id `hpcinfer submit` printed, e.g. 12345 "
            "(Slurm) or 12345.server (PBS)"
        )
    return value


def failed(result: CommandResult, what: str) -> SchedulerError:
    return SchedulerError(
        f"{what} failed (`{' '.join(result.argv)}` exited {result.returncode}): {result.output()}"
    )


class BatchScheduler(ABC):
    """One batch scheduler: its job scripts, its launcher and its commands.

    Subclasses set the class attributes and implement the abstract methods; registering the
    class (``submit.schedulers.register_scheduler``) makes ``--scheduler NAME`` use it.
    """

    name: ClassVar[str]  # --scheduler NAME and job.scheduler
    title: ClassVar[str]  # as users write it: "Slurm", "PBS"
    program: ClassVar[str]  # the submit command; on PATH means this scheduler is here
    script_name: ClassVar[str]  # the job script's file name in the job directory
    template: ClassVar[str]  # the Jinja2 template under submit/templates
    shebang: ClassVar[str]
    job_id_var: ClassVar[str]  # the variable holding the job id inside a job
    cancel_program: ClassVar[str]  # takes one job id: qdel, scancel
    run_launcher: ClassVar[str]  # `hpcinfer run --launcher` inside a job of this scheduler
    # Whether a node's GPUs must be asked for (Slurm) or come with the node (PBS chunks).
    requests_gpus: ClassVar[bool] = False
    # Directive spellings only this scheduler takes ("-l" for PBS, "--" for Slurm): an
    # extra directive written so is refused under another scheduler, naming this one.
    own_directive_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, runner: CommandRunner = run_command) -> None:
        self.runner = runner

    # --- the job script ---------------------------------------------------------------

    @abstractmethod
    def directives(self, req: Request) -> list[str]:
        """The scheduler's lines at the top of the script (#PBS ..., #SBATCH ...)."""

    @abstractmethod
    def launch(self, request: LaunchRequest) -> list[str]:
        """The argv that starts ``request``'s ranks inside a job (mpiexec, srun)."""

    def cpu_bind(self, value: str | list[str] | None) -> str | None:
        """job.cpu_bind as this launcher spells it; a list of core ranges only where it
        has a form for one."""
        if isinstance(value, list):
            raise SpecError(
                f"job.cpu_bind as a list is PALS syntax (PBS); under {self.name} write one string"
            )
        return value

    # --- its commands -----------------------------------------------------------------

    @abstractmethod
    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str] = ()) -> str:
        """Submit ``script``; the job id the scheduler gave it."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """The job's state, mapped onto hpcinfer's JobState, with the scheduler's own words."""

    def cancel(self, job_id: str) -> None:
        job_id = check_job_id(job_id)
        result = self.runner([self.cancel_program, job_id])
        if result.returncode != 0:
            raise failed(result, f"cancelling job {job_id}")
