"""The scheduler seam: submit, status and cancel for PBS and Slurm behind one interface.

Every scheduler command goes through one injectable runner (argv in, exit code and output
back), so tests stand in for qsub/sbatch without a cluster and nothing here builds a shell
line. Job ids arrive from users, so they are checked before they reach a command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hpcinfer.errors import HpcinferError, SpecError
from hpcinfer.submit.options import Scheduler
from hpcinfer.submit.states import JobState, JobStatus, pbs_state, slurm_state

COMMAND_TIMEOUT_S = 60.0
RESUBMITS_VAR = "HPCINFER_RESUBMITS_LEFT"
# Slurm: 123, 123_4 (array task), 123+1 (het job); PBS: 123.server, 123[].server, q@srv.
_JOB_ID = re.compile(r"[0-9][A-Za-z0-9_.+\[\]@-]*")


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
    if not _JOB_ID.fullmatch(value):
        raise SpecError(
            f"{job_id!r} is not a job id; give the id `hpcinfer submit` printed, e.g. 12345 "
            "(Slurm) or 12345.server (PBS)"
        )
    return value


def _failed(result: CommandResult, what: str) -> SchedulerError:
    return SchedulerError(
        f"{what} failed (`{' '.join(result.argv)}` exited {result.returncode}): {result.output()}"
    )


class BatchScheduler(Protocol):
    name: Scheduler

    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str]) -> str: ...

    def status(self, job_id: str) -> JobStatus: ...

    def cancel(self, job_id: str) -> None: ...


# --- Slurm ------------------------------------------------------------------------------


def _scontrol_fields(text: str) -> dict[str, str]:
    """Key=value pairs of `scontrol show job -o` (first line; values have no spaces we need)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _slurm_exit(code: str | None) -> int | None:
    """'4:0' (exit code 4, signal 0) -> 4."""
    match = re.match(r"(\d+):\d+", code or "")
    return int(match.group(1)) if match else None


class SlurmScheduler:
    """sbatch --parsable, scontrol show job (then sacct, if accounting is on), scancel."""

    name: Scheduler = "slurm"

    def __init__(self, runner: CommandRunner = run_command) -> None:
        self.runner = runner

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
        if result.returncode != 0 or not _JOB_ID.fullmatch(job_id):
            raise _failed(result, "submitting the job")
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
        raise _failed(shown, f"asking Slurm about job {job_id}")

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

    def cancel(self, job_id: str) -> None:
        job_id = check_job_id(job_id)
        result = self.runner(["scancel", job_id])
        if result.returncode != 0:
            raise _failed(result, f"cancelling job {job_id}")


# --- PBS --------------------------------------------------------------------------------


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


class PbsScheduler:
    """qsub, qstat -f (JSON, else text; -x for finished jobs where job history is on), qdel."""

    name: Scheduler = "pbs"

    def __init__(
        self, runner: CommandRunner = run_command, environ: Mapping[str, str] | None = None
    ) -> None:
        self.runner = runner
        self.environ = os.environ if environ is None else environ

    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str] = ()) -> str:
        """PBS starts jobs in a fresh environment: pass the resubmit count and named variables.

        A name without a value makes qsub take it from its own environment; names not set
        here are left out rather than passed empty.
        """
        names = [name for name in pass_env if name in self.environ]
        variables = ",".join([f"{RESUBMITS_VAR}={resubmits_left}", *names])
        result = self.runner(["qsub", "-v", variables, str(script)])
        job_id = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
        if result.returncode != 0 or not _JOB_ID.fullmatch(job_id):
            raise _failed(result, "submitting the job")
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
            raise _failed(result, f"asking PBS about job {job_id}")
        raw = str(job.get("job_state", ""))
        exit_status = _int_or_none(job.get("Exit_status"))
        state, detail = pbs_state(raw, exit_status)
        comment = job.get("comment")
        return JobStatus(
            job_id, self.name, state, raw, exit_status, str(comment) if comment else None, detail
        )

    def cancel(self, job_id: str) -> None:
        job_id = check_job_id(job_id)
        result = self.runner(["qdel", job_id])
        if result.returncode != 0:
            raise _failed(result, f"cancelling job {job_id}")


# --- choosing one -----------------------------------------------------------------------

_PROGRAMS: dict[Scheduler, str] = {"pbs": "qsub", "slurm": "sbatch"}
_CLASSES: Mapping[Scheduler, Callable[[CommandRunner], BatchScheduler]] = {
    "pbs": PbsScheduler,
    "slurm": SlurmScheduler,
}


def detect_scheduler(which: Callable[[str], str | None] = shutil.which) -> Scheduler:
    """The scheduler whose submit command is on PATH; an error if neither or both are."""
    found = [name for name, program in _PROGRAMS.items() if which(program)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise SchedulerError(
            "neither sbatch (Slurm) nor qsub (PBS) is on PATH; run on the cluster's login "
            "node, or pass --scheduler pbs|slurm (with --dry-run to only print the script)"
        )
    raise SchedulerError(
        "both sbatch and qsub are on PATH; pass --scheduler pbs or --scheduler slurm "
        "(or set job.scheduler in the spec)"
    )


def get_scheduler(name: Scheduler, runner: CommandRunner = run_command) -> BatchScheduler:
    return _CLASSES[name](runner)
