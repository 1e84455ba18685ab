"""Scheduler states -> JobState: timeout and preemption apart from failure, exit 4 as TIMEOUT."""

from __future__ import annotations

import pytest

from hpcinfer.submit.pbs import PBS_JOB_STATES, pbs_state
from hpcinfer.submit.slurm import SLURM_STATES, slurm_state
from hpcinfer.submit.states import JobState, JobStatus


@pytest.mark.parametrize(
    ("raw", "exit_code", "expected"),
    [
        ("PENDING", None, JobState.PENDING),
        ("CONFIGURING", None, JobState.PENDING),
        ("REQUEUED", None, JobState.PENDING),
        ("SUSPENDED", None, JobState.PENDING),
        ("RUNNING", None, JobState.RUNNING),
        ("COMPLETING", None, JobState.RUNNING),
        ("COMPLETED", 0, JobState.COMPLETED),
        ("FAILED", 1, JobState.FAILED),
        ("FAILED", 3, JobState.FAILED),
        ("FAILED", 4, JobState.TIMEOUT),  # hpcinfer stopped before the walltime
        ("NODE_FAIL", 0, JobState.FAILED),
        ("BOOT_FAIL", 0, JobState.FAILED),
        ("OUT_OF_MEMORY", 0, JobState.FAILED),
        ("CANCELLED", 0, JobState.CANCELLED),
        ("CANCELLED by 1000", 0, JobState.CANCELLED),  # sacct's spelling
        ("TIMEOUT", 0, JobState.TIMEOUT),
        ("DEADLINE", 0, JobState.TIMEOUT),
        ("PREEMPTED", 0, JobState.PREEMPTED),
        ("RUNNING+", None, JobState.RUNNING),  # sacct marks truncated states with '+'
        ("SOMETHING_NEW", None, JobState.UNKNOWN),
        ("", None, JobState.UNKNOWN),
    ],
)
def test_slurm_states(raw: str, exit_code: int | None, expected: JobState) -> None:
    assert slurm_state(raw, exit_code)[0] is expected


def test_slurm_details_say_what_to_do() -> None:
    assert "memory_share" in slurm_state("OUT_OF_MEMORY", 0)[1]
    assert "resume" in slurm_state("FAILED", 4)[1]
    assert "error rows" in slurm_state("FAILED", 3)[1]
    assert "walltime" in slurm_state("TIMEOUT", 0)[1]


@pytest.mark.parametrize(
    ("job_state", "exit_status", "expected"),
    [
        ("Q", None, JobState.PENDING),
        ("H", None, JobState.PENDING),
        ("W", None, JobState.PENDING),
        ("S", None, JobState.PENDING),
        ("R", None, JobState.RUNNING),
        ("E", 0, JobState.RUNNING),
        ("B", None, JobState.RUNNING),
        ("F", 0, JobState.COMPLETED),
        ("F", 1, JobState.FAILED),
        ("F", 3, JobState.FAILED),
        ("F", 4, JobState.TIMEOUT),  # hpcinfer stopped before the walltime
        ("F", -29, JobState.TIMEOUT),  # JOB_EXEC_KILL_WALLTIME
        ("F", -27, JobState.FAILED),  # JOB_EXEC_KILL_MEM
        ("F", -11, JobState.PREEMPTED),  # JOB_EXEC_RERUN
        ("F", -12, JobState.PREEMPTED),  # JOB_EXEC_CHKP
        ("F", -1, JobState.FAILED),
        ("F", -99, JobState.FAILED),  # an exec failure not in the table
        ("F", 271, JobState.CANCELLED),  # 256 + SIGTERM: qdel
        ("F", 265, JobState.CANCELLED),  # 256 + SIGKILL: qdel -W force
        ("F", 267, JobState.FAILED),  # 256 + SIGSEGV
        ("F", None, JobState.UNKNOWN),
        ("X", 0, JobState.COMPLETED),
        ("C", 0, JobState.COMPLETED),  # Torque
        ("M", None, JobState.UNKNOWN),
        ("Z", None, JobState.UNKNOWN),
    ],
)
def test_pbs_states(job_state: str, exit_status: int | None, expected: JobState) -> None:
    assert pbs_state(job_state, exit_status)[0] is expected


def test_every_table_entry_maps_to_a_state() -> None:
    assert set(SLURM_STATES.values()) <= set(JobState)
    assert {s for s in PBS_JOB_STATES.values() if s is not None} <= set(JobState)


def test_final_states() -> None:
    assert not JobState.PENDING.final and not JobState.RUNNING.final
    assert all(
        s.final for s in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)
    )


def test_status_as_dict_is_json_ready() -> None:
    status = JobStatus("12", "slurm", JobState.TIMEOUT, "FAILED", 4, None, "d")
    assert status.as_dict() == {
        "job_id": "12",
        "scheduler": "slurm",
        "state": "TIMEOUT",
        "raw_state": "FAILED",
        "exit_code": 4,
        "reason": None,
        "detail": "d",
    }
