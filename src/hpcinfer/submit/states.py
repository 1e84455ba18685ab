"""One set of job states for PBS and Slurm, and the tables that map each scheduler's onto it.

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

# --- Slurm: JobState names from squeue/scontrol/sacct (squeue(1) "JOB STATE CODES") -----

SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,  # nodes allocated, booting: the script has not started
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "STOPPED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "LAUNCH_FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,  # a federation sibling started elsewhere
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,  # --deadline passed
    "PREEMPTED": JobState.PREEMPTED,
}

SLURM_DETAILS: dict[str, str] = {
    "NODE_FAIL": "a node of the job failed; submit again to resume",
    "BOOT_FAIL": "the nodes failed to boot; submit again to resume",
    "OUT_OF_MEMORY": "the job ran out of host memory; lower engine.memory_share or "
    "engine.max_num_seqs, then submit again to resume",
    "TIMEOUT": "walltime reached; submit again (or raise job.walltime) to resume",
    "DEADLINE": "the job's deadline passed; submit again to resume",
    "PREEMPTED": "preempted by another job; submit again to resume",
}


def slurm_state(raw: str, exit_code: int | None = None) -> tuple[JobState, str]:
    """Our state and a hint for Slurm's ``raw`` state ('CANCELLED by 0' reads as CANCELLED)."""
    words = raw.strip().upper().split()
    name = words[0].rstrip("+") if words else ""
    state = SLURM_STATES.get(name, JobState.UNKNOWN)
    if state is JobState.FAILED and exit_code == int(ExitCode.INCOMPLETE):
        return JobState.TIMEOUT, INCOMPLETE_DETAIL
    return state, SLURM_DETAILS.get(name, _exit_detail(state, exit_code))


# --- PBS: job_state letters (qstat(1B)) and Exit_status values (PBS Pro job.h) -----------

PBS_JOB_STATES: dict[str, JobState | None] = {
    "Q": JobState.PENDING,  # queued
    "H": JobState.PENDING,  # held
    "W": JobState.PENDING,  # waiting for its start time
    "T": JobState.PENDING,  # in transit between servers
    "S": JobState.PENDING,  # suspended by the server (a higher priority job took the node)
    "U": JobState.PENDING,  # suspended: workstation busy
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting after having run
    "B": JobState.RUNNING,  # array job: subjobs begun
    "M": JobState.UNKNOWN,  # moved to another server: ask that one
    "F": None,  # finished: the exit status decides
    "X": None,  # subjob finished
    "C": None,  # Torque: completed
}

# PBS's own negative exit statuses (JOB_EXEC_* in OpenPBS src/include/job.h).
PBS_EXIT_STATES: dict[int, tuple[JobState, str]] = {
    -29: (JobState.TIMEOUT, "killed at the walltime; submit again (or raise job.walltime)"),
    -11: (JobState.PREEMPTED, "the job was requeued (rerun) by PBS"),
    -12: (JobState.PREEMPTED, "checkpointed and killed by PBS"),
    -27: (JobState.FAILED, "killed for exceeding its memory request"),
    -26: (JobState.FAILED, "killed for exceeding its virtual memory request"),
    -25: (JobState.FAILED, "killed for exceeding its CPU count"),
    -24: (JobState.FAILED, "killed for exceeding its CPU count (burst)"),
    -28: (JobState.FAILED, "killed for exceeding its CPU time"),
    -1: (JobState.FAILED, "PBS could not start the job (before its files were staged)"),
    -2: (JobState.FAILED, "PBS could not start the job (after its files were staged)"),
    -3: (JobState.FAILED, "PBS could not start the job on the node (JOB_EXEC_RETRY)"),
    -19: (JobState.CANCELLED, "a PBS hook deleted the job"),
}
_SIGNAL_BASE = 256  # PBS reports a job killed by signal N as 256 + N
_CANCEL_SIGNALS = {9, 15}  # qdel sends SIGTERM, then SIGKILL


def pbs_state(job_state: str, exit_status: int | None) -> tuple[JobState, str]:
    """Our state and a hint from PBS's job_state letter and Exit_status."""
    letter = job_state.strip().upper()[:1]
    if letter not in PBS_JOB_STATES:
        return JobState.UNKNOWN, f"PBS state {job_state!r} is not in hpcinfer's table"
    state = PBS_JOB_STATES[letter]
    if letter == "M":
        return JobState.UNKNOWN, "moved to another server; ask that one (qstat JOB@server)"
    if state is not None:
        return state, ""
    if exit_status is None:
        return JobState.UNKNOWN, "finished, but PBS reports no Exit_status"
    if exit_status < 0:
        return PBS_EXIT_STATES.get(
            exit_status, (JobState.FAILED, f"PBS could not run the job (Exit_status {exit_status})")
        )
    if exit_status >= _SIGNAL_BASE:
        signal = exit_status - _SIGNAL_BASE
        if signal in _CANCEL_SIGNALS:
            return JobState.CANCELLED, f"killed by signal {signal} (qdel)"
        return JobState.FAILED, f"killed by signal {signal}"
    if exit_status == 0:
        return JobState.COMPLETED, ""
    if exit_status == int(ExitCode.INCOMPLETE):
        return JobState.TIMEOUT, INCOMPLETE_DETAIL
    return JobState.FAILED, _exit_detail(JobState.FAILED, exit_status)


def _exit_detail(state: JobState, exit_code: int | None) -> str:
    """What hpcinfer's own exit codes mean, for a job that ended with one."""
    if state is not JobState.FAILED or exit_code is None:
        return ""
    if exit_code == int(ExitCode.RECORD_ERRORS):
        return "the run finished; some records are error rows (exit 3)"
    if exit_code == int(ExitCode.USAGE):
        return "bad spec, flags or input paths (exit 2); see the job's output file"
    return f"exit code {exit_code}; see the job's output file"
