"""The scheduler seam through a fake runner: the commands sent and how answers are read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcinfer.errors import SpecError
from hpcinfer.submit.pbs import PbsScheduler
from hpcinfer.submit.scheduler import CommandResult, SchedulerError, check_job_id
from hpcinfer.submit.schedulers import detect_scheduler
from hpcinfer.submit.slurm import SlurmScheduler
from hpcinfer.submit.states import JobState


class FakeRunner:
    """Answers by program name (first answer per program that is left), records every argv."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        queue = self.answers.get(argv[0], [])
        code, out, err = queue.pop(0) if queue else (1, "", f"{argv[0]}: no answer")
        return CommandResult(list(argv), code, out, err)


SCRIPT = Path("/lus/out/job/job.slurm")

# --- Slurm -------------------------------------------------------------------------------


def test_sbatch_submits_with_the_resubmit_count_and_reads_the_parsable_id() -> None:
    runner = FakeRunner({"sbatch": [(0, "4242;perlmutter\n", "")]})
    job_id = SlurmScheduler(runner).submit(SCRIPT, 3, ["HF_TOKEN"])
    assert job_id == "4242"
    assert runner.calls == [
        ["sbatch", "--parsable", "--export=ALL,HPCINFER_RESUBMITS_LEFT=3", str(SCRIPT)]
    ]


def test_sbatch_failure_shows_slurms_message() -> None:
    runner = FakeRunner({"sbatch": [(1, "", "sbatch: error: invalid partition specified: x")]})
    with pytest.raises(SchedulerError, match="invalid partition specified"):
        SlurmScheduler(runner).submit(SCRIPT, 0)


SCONTROL = (
    "JobId=77 JobName=hpcinfer UserId=u(1) JobState={state} Reason={reason} "
    "Dependency=(null) ExitCode={exit} RunTime=00:00:05 TimeLimit=00:10:00\n"
)


@pytest.mark.parametrize(
    ("state", "exit_text", "reason", "expected", "code"),
    [
        ("PENDING", "0:0", "Priority", JobState.PENDING, None),
        ("RUNNING", "0:0", "None", JobState.RUNNING, None),
        ("COMPLETED", "0:0", "None", JobState.COMPLETED, 0),
        ("FAILED", "4:0", "NonZeroExitCode", JobState.TIMEOUT, 4),
        ("FAILED", "1:0", "NonZeroExitCode", JobState.FAILED, 1),
        ("OUT_OF_MEMORY", "0:125", "OutOfMemory", JobState.FAILED, 0),
        ("TIMEOUT", "0:15", "TimeLimit", JobState.TIMEOUT, 0),
        ("PREEMPTED", "0:15", "None", JobState.PREEMPTED, 0),
    ],
)
def test_slurm_status_from_scontrol(
    state: str, exit_text: str, reason: str, expected: JobState, code: int | None
) -> None:
    text = SCONTROL.format(state=state, exit=exit_text, reason=reason)
    runner = FakeRunner({"scontrol": [(0, text, "")]})
    status = SlurmScheduler(runner).status("77")
    assert (status.state, status.raw_state, status.exit_code) == (expected, state, code)
    assert status.reason == (None if reason == "None" else reason)
    assert runner.calls == [["scontrol", "show", "job", "-o", "77"]]


def test_slurm_status_falls_back_to_sacct_for_jobs_scontrol_forgot() -> None:
    runner = FakeRunner(
        {
            "scontrol": [(1, "", "slurm_load_jobs error: Invalid job id specified")],
            "sacct": [(0, "77|CANCELLED by 1000|0:0\n", "")],
        }
    )
    status = SlurmScheduler(runner).status("77")
    assert status.state is JobState.CANCELLED
    assert runner.calls[1][:2] == ["sacct", "-n"]


def test_slurm_status_unknown_when_neither_knows_the_job() -> None:
    runner = FakeRunner(
        {
            "scontrol": [(1, "", "slurm_load_jobs error: Invalid job id specified")],
            "sacct": [(1, "", "Slurm accounting storage is disabled")],
        }
    )
    status = SlurmScheduler(runner).status("77")
    assert status.state is JobState.UNKNOWN
    assert "MinJobAge" in status.detail


def test_slurm_status_unknown_when_sacct_is_not_installed() -> None:
    def runner(argv: Sequence[str]) -> CommandResult:
        if argv[0] == "sacct":
            raise SchedulerError("sacct is not on PATH")
        return CommandResult(list(argv), 1, "", "Invalid job id specified")

    assert SlurmScheduler(runner).status("77").state is JobState.UNKNOWN


def test_slurm_status_error_when_slurm_cannot_be_reached() -> None:
    runner = FakeRunner({"scontrol": [(1, "", "Unable to contact slurm controller")]})
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        SlurmScheduler(runner).status("77")


def test_scancel_and_its_errors() -> None:
    runner = FakeRunner({"scancel": [(0, "", ""), (1, "", "Invalid job id specified")]})
    SlurmScheduler(runner).cancel("77")
    assert runner.calls == [["scancel", "77"]]
    with pytest.raises(SchedulerError, match="Invalid job id"):
        SlurmScheduler(runner).cancel("78")


# --- PBS ---------------------------------------------------------------------------------


def test_qsub_passes_the_count_and_only_the_named_variables_that_are_set() -> None:
    runner = FakeRunner({"qsub": [(0, "123.aurora-pbs-0001.hostmgmt\n", "")]})
    pbs = PbsScheduler(runner, environ={"HF_TOKEN": "hf_secret", "PATH": "/bin"})
    job_id = pbs.submit(Path("/lus/out/job/job.pbs"), 2, ["HF_TOKEN", "HF_HOME"])
    assert job_id == "123.aurora-pbs-0001.hostmgmt"
    # Names only: qsub takes the values from its own environment, the secret is not in argv.
    assert runner.calls == [
        ["qsub", "-v", "HPCINFER_RESUBMITS_LEFT=2,HF_TOKEN", "/lus/out/job/job.pbs"]
    ]


def test_qsub_failure_shows_pbs_message() -> None:
    runner = FakeRunner({"qsub": [(38, "", "qsub: Job exceeds queue resource limits")]})
    with pytest.raises(SchedulerError, match="queue resource limits"):
        PbsScheduler(runner, environ={}).submit(Path("/x/job.pbs"), 0)


def _qstat_json(state: str, exit_status: int | None) -> str:
    job: dict[str, object] = {"job_state": state, "comment": "Job run at Mon on (x1001:ngpus=6)"}
    if exit_status is not None:
        job["Exit_status"] = exit_status
    return json.dumps({"timestamp": 1, "pbs_version": "2022.1", "Jobs": {"123.srv": job}})


@pytest.mark.parametrize(
    ("state", "exit_status", "expected"),
    [
        ("Q", None, JobState.PENDING),
        ("R", None, JobState.RUNNING),
        ("F", 0, JobState.COMPLETED),
        ("F", -29, JobState.TIMEOUT),
        ("F", 4, JobState.TIMEOUT),
        ("F", 271, JobState.CANCELLED),
        ("F", 2, JobState.FAILED),
    ],
)
def test_pbs_status_from_json(state: str, exit_status: int | None, expected: JobState) -> None:
    runner = FakeRunner({"qstat": [(0, _qstat_json(state, exit_status), "")]})
    status = PbsScheduler(runner).status("123.srv")
    assert (status.state, status.raw_state, status.exit_code) == (expected, state, exit_status)
    assert status.reason and "x1001" in status.reason
    assert runner.calls == [["qstat", "-f", "-F", "json", "-x", "123.srv"]]


QSTAT_TEXT = """Job Id: 123.srv
    Job_Name = hpcinfer
    job_state = F
    queue = debug
    Exit_status = -29
    Resource_List.walltime = 00:10:00
"""


def test_pbs_status_reads_plain_qstat_when_json_is_unavailable() -> None:
    runner = FakeRunner({"qstat": [(2, "", "qstat: invalid option -- 'F'"), (0, QSTAT_TEXT, "")]})
    status = PbsScheduler(runner).status("123.srv")
    assert status.state is JobState.TIMEOUT and status.exit_code == -29
    assert runner.calls[1] == ["qstat", "-f", "-x", "123.srv"]


def test_pbs_status_reads_plain_qstat_when_json_is_broken() -> None:
    broken = '{"Jobs": {"123.srv": {"Variable_List": {"X": "a\\qb"}'
    runner = FakeRunner({"qstat": [(0, broken, ""), (0, QSTAT_TEXT, "")]})
    assert PbsScheduler(runner).status("123.srv").state is JobState.TIMEOUT


def test_pbs_status_unknown_job_without_history() -> None:
    runner = FakeRunner({"qstat": [(153, "", "qstat: Unknown Job Id 123.srv")]})
    status = PbsScheduler(runner).status("123.srv")
    assert status.state is JobState.UNKNOWN and "job history" in status.detail
    assert len(runner.calls) == 1


def test_qdel() -> None:
    runner = FakeRunner({"qdel": [(0, "", ""), (35, "", "qdel: Job has finished 9.srv")]})
    PbsScheduler(runner).cancel("123.srv")
    assert runner.calls == [["qdel", "123.srv"]]
    with pytest.raises(SchedulerError, match="Job has finished"):
        PbsScheduler(runner).cancel("9.srv")


# --- ids and detection -------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["123", " 123 ", "123_4", "123.aurora-pbs", "12[].srv"])
def test_job_ids_accepted(job_id: str) -> None:
    assert check_job_id(job_id) == job_id.strip()


@pytest.mark.parametrize("job_id", ["", "-x", "--all", "12; rm -rf /", "$(id)", "abc"])
def test_job_ids_refused(job_id: str) -> None:
    with pytest.raises(SpecError, match="not a job id"):
        check_job_id(job_id)


def test_status_refuses_a_bad_id_before_running_anything() -> None:
    runner = FakeRunner({})
    with pytest.raises(SpecError):
        SlurmScheduler(runner).status("--me")
    assert runner.calls == []


def test_detect_scheduler() -> None:
    assert detect_scheduler(lambda p: "/usr/bin/sbatch" if p == "sbatch" else None) == "slurm"
    assert detect_scheduler(lambda p: "/opt/pbs/bin/qsub" if p == "qsub" else None) == "pbs"
    with pytest.raises(SchedulerError, match="neither sbatch"):
        detect_scheduler(lambda p: None)
    with pytest.raises(SchedulerError, match="both sbatch and qsub"):
        detect_scheduler(lambda p: f"/bin/{p}")
