"""Slurm: #SBATCH directives, srun, sbatch/scontrol/sacct/scancel and Slurm's job states."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hpcinfer.errors import SpecError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.launch import LaunchRequest, srun
from hpcinfer.submit.directives import Request, refuse
from hpcinfer.submit.scheduler import (
    JOB_ID,
    RESUBMITS_VAR,
    BatchScheduler,
    SchedulerError,
    check_job_id,
    failed,
)
from hpcinfer.submit.states import INCOMPLETE_DETAIL, JobState, JobStatus, exit_detail
from hpcinfer.submit.walltime import slurm_time

SLURM_LOG = "slurm-%j.out"

# --- JobState names from squeue/scontrol/sacct (squeue(1) "JOB STATE CODES") -------------

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
    return state, SLURM_DETAILS.get(name, exit_detail(state, exit_code))


def _scontrol_fields(text: str) -> dict[str, str]:
    """Key=value pairs of `scontrol show job -o` (first line; values have no spaces we need)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _slurm_exit(code: str | None) -> int | None:
    """'4:0' (exit code 4, signal 0) -> 4."""
    match = re.match(r"(\d+):\d+", code or "")
    return int(match.group(1)) if match else None


class SlurmScheduler(BatchScheduler):
    """sbatch --parsable, scontrol show job (then sacct, if accounting is on), scancel."""

    name = "slurm"
    title = "Slurm"
    own_directive_prefixes = ("--",)  # long options; qsub has none
    program = "sbatch"
    cancel_program = "scancel"
    script_name = "job.slurm"
    template = "job.slurm.j2"
    # Slurm passes the submitting shell's environment on, which a login shell could undo.
    shebang = "#!/bin/bash"
    job_id_var = "SLURM_JOB_ID"
    run_launcher = "srun"
    requests_gpus = True

    # --- the job script ---------------------------------------------------------------

    def directives(self, req: Request) -> list[str]:
        """Nodes, tasks and GPUs per node, time, account, partition, QOS, constraint."""
        job = req.job
        refuse(req, {"filesystems": "drop job.filesystems"}, self.name)
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

    def launch(self, request: LaunchRequest) -> list[str]:
        return srun(request)

    def cpu_bind(self, value: str | list[str] | None) -> str | None:
        """srun has no per-rank list of core ranges."""
        if isinstance(value, list):
            raise SpecError(
                "job.cpu_bind as a list is PALS syntax (PBS); for srun write one string such "
                "as 'cores' or 'map_cpu:0,8'"
            )
        return value

    # --- its commands -----------------------------------------------------------------

    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str] = ()) -> str:
        """Slurm passes the whole environment on (so pass_env needs nothing here)."""
        argv = [
            "sbatch",
            "--parsable",
            f"--export=ALL,{RESUBMITS_VAR}={resubmits_left}",
            str(script),
        ]
        result = self.runner(argv)
        job_id = result.stdout.strip().split(";", 1)[0]
        if result.returncode != 0 or not JOB_ID.fullmatch(job_id):
            raise failed(result, "submitting the job")
        return job_id

    def status(self, job_id: str) -> JobStatus:
        job_id = check_job_id(job_id)
        shown = self.runner(["scontrol", "show", "job", "-o", job_id])
        if shown.returncode == 0 and "JobState=" in shown.stdout:
            fields = _scontrol_fields(shown.stdout)
            return self._status(
                job_id, fields.get("JobState", ""), fields.get("ExitCode"), fields.get("Reason")
            )
        for line in self._sacct(job_id).splitlines():
            parts = line.split("|")
            if len(parts) >= 3 and parts[0] == job_id:
                return self._status(job_id, parts[1], parts[2], None)
        if "invalid job id" in shown.output().lower():
            return JobStatus(
                job_id,
                self.name,
                JobState.UNKNOWN,
                "",
                detail="Slurm no longer knows this job "
                "(it ended more than MinJobAge ago and job accounting is off), or the id is wrong",
            )
        raise failed(shown, f"asking Slurm about job {job_id}")

    def _sacct(self, job_id: str) -> str:
        """Accounting's record of the job; empty where sacct is missing or accounting is off."""
        try:
            acct = self.runner(
                ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"]
            )
        except SchedulerError:
            return ""
        return acct.stdout if acct.returncode == 0 else ""

    def _status(
        self, job_id: str, raw: str, exit_text: str | None, reason: str | None
    ) -> JobStatus:
        state, detail = slurm_state(raw, _slurm_exit(exit_text))
        # Slurm shows ExitCode=0:0 for jobs that have not ended: report no exit code then.
        exit_code = _slurm_exit(exit_text) if state.final else None
        shown_reason = None if reason in (None, "", "None") else reason
        return JobStatus(job_id, self.name, state, raw, exit_code, shown_reason, detail)
