"""CLI commands `hpcinfer submit`, `status` and `cancel` (registered on the app by `register`).

Thin: they build the spec, call `hpcinfer.submit`, and print. Nothing heavy is imported at
module level (the submit package is imported inside the commands).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hpcinfer.errors import SpecError

err = Console(stderr=True)

SUBMIT_HELP = """Write a batch job script for SPEC and submit it (PBS or Slurm).

The script and a copy of the spec with absolute paths go to OUTPUT_DIR/job/ (job.pbs or
job.slurm, spec.yaml); the job runs `hpcinfer run` there and resumes where an earlier job
stopped. Scheduler options come from the spec's `job:` section, the flags below override it.
"""

SUBMIT_EPILOG = (
    "Examples: "
    "hpcinfer submit spec.yaml --dry-run  (print the script, submit nothing); "
    "hpcinfer submit spec.yaml --scheduler pbs --nodes 4 --walltime 01:00:00 "
    "--account myproj --queue debug --resubmit 3; "
    "hpcinfer submit spec.yaml --scheduler slurm --queue gpu --set job.constraint=gpu. "
    "Prints the job id on stdout."
)

STATUS_EPILOG = (
    "States: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT (walltime reached, or "
    "hpcinfer stopped before it: resubmit resumes), PREEMPTED, UNKNOWN. "
    "Examples: hpcinfer status 12345; hpcinfer status 12345.aurora-pbs --json"
)

# Flag -> job field, for the messages of bad flag values.
_SUBMIT_FLAGS = {
    "scheduler": "--scheduler",
    "nodes": "--nodes",
    "walltime": "--walltime",
    "account": "--account",
    "queue": "--queue",
    "resubmit": "--resubmit",
}


def _scheduler_option(value: str | None) -> str | None:
    from hpcinfer.submit.schedulers import scheduler_class

    return None if value is None else scheduler_class(value).name


def _with_job_flags(spec: Any, flags: dict[str, Any]) -> Any:
    """The spec with the submit flags applied to its `job:` section, validated."""
    from pydantic import ValidationError

    from hpcinfer.submit.options import JobScriptSpec

    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return spec
    try:
        spec.job = JobScriptSpec.model_validate({**spec.job.model_dump(), **given})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            lines.append(f"  {_SUBMIT_FLAGS.get(field, 'job.' + field)}: {error['msg']}")
        raise SpecError("hpcinfer submit options are invalid:\n" + "\n".join(lines)) from None
    return spec


def submit(
    spec_file: Annotated[Path, typer.Argument(help="The job spec (YAML).", show_default=False)],
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="pbs or slurm (default: job.scheduler, the profile's, or the one "
            "whose qsub/sbatch is on PATH)."
        ),
    ] = None,
    nodes: Annotated[int | None, typer.Option(help="Nodes to request.")] = None,
    walltime: Annotated[
        str | None, typer.Option(help="Time limit: 01:00:00, 1-00:00:00, 90m, 2h.")
    ] = None,
    account: Annotated[str | None, typer.Option(help="Project to charge (-A / --account).")] = None,
    queue: Annotated[str | None, typer.Option(help="PBS queue, or the Slurm partition.")] = None,
    resubmit: Annotated[
        int | None,
        typer.Option(help="Resubmit this many times when the run stops before the walltime."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any spec field: --set job.qos=regular."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the script; write and submit nothing.")
    ] = False,
) -> None:
    from hpcinfer.core.spec_loading import load_job_spec
    from hpcinfer.submit.prepare import prepare_job
    from hpcinfer.submit.schedulers import get_scheduler

    if spec_file.suffix not in (".yaml", ".yml"):
        raise SpecError(f"{spec_file}: give the job spec as a .yaml file")
    cwd = Path.cwd()
    spec = load_job_spec(spec_file, (), {}, set_ or [], cwd)
    flags = {
        "nodes": nodes,
        "walltime": walltime,
        "account": account,
        "queue": queue,
        "resubmit": resubmit,
    }
    spec = _with_job_flags(spec, flags)
    prepared = prepare_job(spec, cwd, _scheduler_option(scheduler))
    if spec.workers.profile is None:
        err.print(
            f"note: no workers.profile in the spec; ranks per node sized for this machine "
            f"({escape(prepared.profile.name)}, {prepared.profile.devices_per_node} devices). "
            "Set workers.profile (or job.ranks_per_node) for the compute nodes."
        )
    if dry_run:
        sys.stdout.write(prepared.script)
        err.print(
            f"dry run: nothing written or submitted; without --dry-run this script goes to "
            f"{escape(str(prepared.files.script))} and is submitted."
        )
        return
    prepared.write()
    batch = get_scheduler(prepared.files.scheduler)
    job_id = batch.submit(
        prepared.files.script, prepared.spec.job.resubmit, prepared.spec.job.pass_env
    )
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with (prepared.files.job_dir / "jobs.log").open("a", encoding="utf-8") as log:
        log.write(f"{stamp} submitted {prepared.files.script.name} as job {job_id}\n")
    print(job_id)
    err.print(
        f"submitted {escape(str(prepared.files.script))} as job {escape(job_id)}; "
        f"follow it with: hpcinfer status {escape(job_id)}"
    )


def _scheduler_for(value: str | None) -> Any:
    from hpcinfer.submit.schedulers import detect_scheduler, get_scheduler

    return get_scheduler(_scheduler_option(value) or detect_scheduler())


def status(
    job_id: Annotated[str, typer.Argument(help="The id `hpcinfer submit` printed.")],
    scheduler: Annotated[
        str | None, typer.Option(help="pbs or slurm (default: the one on PATH).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show a submitted job's state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ..."""
    result = _scheduler_for(scheduler).status(job_id)
    if json_out:
        print(json.dumps(result.as_dict(), indent=1))
        return
    facts = [f"{result.scheduler} state {result.raw_state or '-'}"]
    if result.exit_code is not None:
        facts.append(f"exit code {result.exit_code}")
    if result.reason:
        facts.append(f"reason {result.reason}")
    print(f"job {result.job_id}: {result.state.value} ({', '.join(facts)})")
    if result.detail:
        print(f"  {result.detail}")


def cancel(
    job_id: Annotated[str, typer.Argument(help="The id `hpcinfer submit` printed.")],
    scheduler: Annotated[
        str | None, typer.Option(help="pbs or slurm (default: the one on PATH).")
    ] = None,
) -> None:
    """Cancel a submitted job (scancel / qdel). Committed results stay; submit again to resume.

    Example: hpcinfer cancel 12345
    """
    batch = _scheduler_for(scheduler)
    batch.cancel(job_id)
    print(f"cancel requested for job {job_id.strip()} ({batch.name})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `hpcinfer` app."""
    app.command(help=SUBMIT_HELP, epilog=SUBMIT_EPILOG)(submit)
    app.command(epilog=STATUS_EPILOG)(status)
    app.command()(cancel)
