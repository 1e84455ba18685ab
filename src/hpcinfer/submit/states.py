"""One set of job states for every scheduler; each scheduler's module maps its own onto it.

Timeout and preemption stay apart from failure because they call for different actions:
a job that hit its walltime or was preempted resumes when submitted again; a failed one
needs its log read first. hpcinfer's own exit code 4 (stopped before the walltime, committed
work kept) counts as TIMEOUT although the scheduler sees a non-zero exit ("FAILED" in
Slurm, Exit_status 4 in PBS).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from hpcinfer.exitcodes import ExitCode


class JobState(StrEnum):
    PENDING = "PENDING"  # queued, held, requeued or suspended: not running now
    RUNNING = "RUNNING"  # running, or finishing (its final state not known yet)
    COMPLETED = "COMPLETED"  # ended with exit code 0
    FAILED = "FAILED"  # non-zero exit, or the scheduler could not run it (node, memory)
    CANCELLED = "CANCELLED"  # qdel/scancel, by the user or an administrator
    TIMEOUT = "TIMEOUT"  # walltime reached, or hpcinfer stopped before it (exit 4)
    PREEMPTED = "PREEMPTED"  # the scheduler took the nodes back for another job
    UNKNOWN = "UNKNOWN"  # the scheduler no longer knows the job, or a state not in the tables

    @property
    def final(self) -> bool:
        """True once the job will not change state again (UNKNOWN counts: nothing to wait for)."""
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class JobStatus:
    """What `hpcinfer status` reports: our state plus the scheduler's own words."""

    job_id: str
    scheduler: str
    state: JobState
    raw_state: str  # the scheduler's state, e.g. OUT_OF_MEMORY or F
    exit_code: int | None = None
    reason: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


INCOMPLETE_DETAIL = (
    "hpcinfer stopped before the walltime (exit 4): committed work is kept; the job script "
    "resubmits itself while job.resubmit allows (see jobs.log in its job directory), else "
    "submit again to resume"
)


def exit_detail(state: JobState, exit_code: int | None) -> str:
    """What hpcinfer's own exit codes mean, for a job that ended with one."""
    if state is not JobState.FAILED or exit_code is None:
        return ""
    if exit_code == int(ExitCode.RECORD_ERRORS):
        return "the run finished; some records are error rows (exit 3)"
    if exit_code == int(ExitCode.USAGE):
        return "bad spec, flags or input paths (exit 2); see the job's output file"
    return f"exit code {exit_code}; see the job's output file"
