"""PBS Pro: #PBS directives, PALS/Hydra mpiexec, qsub/qstat/qdel and PBS's job states."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hpcinfer.exitcodes import ExitCode
from hpcinfer.launch import LaunchRequest, mpiexec_mpich
from hpcinfer.submit.directives import Request, refuse
from hpcinfer.submit.scheduler import (
    JOB_ID,
    RESUBMITS_VAR,
    BatchScheduler,
    CommandResult,
    CommandRunner,
    check_job_id,
    failed,
    run_command,
)
from hpcinfer.submit.states import INCOMPLETE_DETAIL, JobState, JobStatus, exit_detail
from hpcinfer.submit.walltime import pbs_walltime

PBS_LOG = "pbs.out"  # PBS Pro cannot put the job id in -o; each job replaces it

# --- job_state letters (qstat(1B)) and Exit_status values (PBS Pro job.h) ----------------

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
    return JobState.FAILED, exit_detail(JobState.FAILED, exit_status)


def _pbs_job_from_json(text: str) -> dict[str, Any] | None:
    """The one job in `qstat -f -F json` output; None if it is not JSON we can read."""
    try:
        data = json.loads(text)
    except ValueError:  # some PBS versions write variable values unescaped
        return None
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict) or not jobs:
        return None
    job = next(iter(jobs.values()))
    return job if isinstance(job, dict) else None


def _pbs_job_from_text(text: str) -> dict[str, Any] | None:
    """`qstat -f` text: '    job_state = F' lines (Torque writes exit_status in lower case)."""
    fields: dict[str, Any] = {}
    for match in re.finditer(r"^\s+([\w.]+) = (.*)$", text, flags=re.MULTILINE):
        fields[match.group(1)] = match.group(2).strip()
    if "Exit_status" not in fields and "exit_status" in fields:
        fields["Exit_status"] = fields["exit_status"]
    return fields if "job_state" in fields else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class PbsScheduler(BatchScheduler):
    """qsub, qstat -f (JSON, else text; -x for finished jobs where job history is on), qdel."""

    name = "pbs"
    title = "PBS"
    own_directive_prefixes = ("-l",)  # resources; sbatch has no -l
    program = "qsub"
    cancel_program = "qdel"
    script_name = "job.pbs"
    template = "job.pbs.j2"
    # PBS runs the script in a fresh login environment (module is defined there).
    shebang = "#!/bin/bash -l"
    job_id_var = "PBS_JOBID"
    run_launcher = "mpi"
    requests_gpus = False  # each chunk comes with its node's GPUs

    def __init__(
        self, runner: CommandRunner = run_command, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(runner)
        self.environ = os.environ if environ is None else environ

    # --- the job script ---------------------------------------------------------------

    def directives(self, req: Request) -> list[str]:
        """Select/place chunks, walltime, account, queue, file systems, joined output."""
        job = req.job
        refuse(
            req,
            {
                "partition": "PBS uses job.queue",
                "qos": "drop job.qos",
                "constraint": "put PBS resources in job.extra_directives ('-l ...')",
                "gpus_per_node": "PBS gives each chunk its node's GPUs; drop job.gpus_per_node",
            },
            self.name,
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

    def launch(self, request: LaunchRequest) -> list[str]:
        """PALS or Hydra mpiexec (both take the MPICH options used here)."""
        return mpiexec_mpich(request)

    def cpu_bind(self, value: str | list[str] | None) -> str | None:
        """PALS takes a list of core ranges per rank as ``list:0-7:8-15``."""
        return "list:" + ":".join(value) if isinstance(value, list) else value

    # --- its commands -----------------------------------------------------------------

    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str] = ()) -> str:
        """PBS starts jobs in a fresh environment: pass the resubmit count and named variables.

        A name without a value makes qsub take it from its own environment; names not set
        here are left out rather than passed empty.
        """
        names = [name for name in pass_env if name in self.environ]
        variables = ",".join([f"{RESUBMITS_VAR}={resubmits_left}", *names])
        result = self.runner(["qsub", "-v", variables, str(script)])
        job_id = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
        if result.returncode != 0 or not JOB_ID.fullmatch(job_id):
            raise failed(result, "submitting the job")
        return job_id

    def _query(self, job_id: str) -> tuple[dict[str, Any] | None, CommandResult]:
        attempts: list[tuple[list[str], Callable[[str], dict[str, Any] | None]]] = [
            (["qstat", "-f", "-F", "json", "-x", job_id], _pbs_job_from_json),
            (["qstat", "-f", "-x", job_id], _pbs_job_from_text),
            (["qstat", "-f", job_id], _pbs_job_from_text),  # Torque: -x means XML there
        ]
        first: CommandResult | None = None
        for argv, parse in attempts:
            result = self.runner(argv)
            first = first or result
            if "unknown job id" in result.output().lower():
                return None, result
            if result.returncode == 0:
                job = parse(result.stdout)
                if job is not None:
                    return job, result
        assert first is not None
        return None, first

    def status(self, job_id: str) -> JobStatus:
        job_id = check_job_id(job_id)
        job, result = self._query(job_id)
        if job is None:
            if "unknown job id" in result.output().lower():
                return JobStatus(
                    job_id,
                    self.name,
                    JobState.UNKNOWN,
                    "",
                    detail="PBS no longer knows this "
                    "job (it finished and the server keeps no job history), or the id is wrong",
                )
            raise failed(result, f"asking PBS about job {job_id}")
        raw = str(job.get("job_state", ""))
        exit_status = _int_or_none(job.get("Exit_status"))
        state, detail = pbs_state(raw, exit_status)
        comment = job.get("comment")
        return JobStatus(
            job_id, self.name, state, raw, exit_status, str(comment) if comment else None, detail
        )
