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

from hpcinfer.cli import flags

err = Console(stderr=True)

SUBMIT_HELP = """Write a batch job script that runs `hpcinfer run` and submit it (PBS or Slurm).

It takes what `hpcinfer run` takes (a spec file, inputs, the same flags) plus the job's
flags below: `hpcinfer submit prompts/ --model M -o out --nodes 4` runs that command as a job.
The script and a copy of the spec with absolute paths go to OUTPUT_DIR/job/ (job.pbs or
job.slurm, spec.yaml); the job runs `hpcinfer run` there and resumes where an earlier job
stopped. Scheduler options come from the spec's `job:` section, the flags below override it.
"""

SUBMIT_EPILOG = (
    "Examples: "
    "hpcinfer submit spec.yaml --dry-run  (print the script, submit nothing); "
    "hpcinfer submit spec.yaml --scheduler pbs --nodes 4 --walltime 01:00:00 "
    "--account myproj --queue debug --resubmit 3; "
    "hpcinfer submit spec.yaml --scheduler slurm --queue gpu --set job.constraint=gpu; "
    "hpcinfer submit spec.yaml --ray --ray-interface hsn0 (a Ray cluster over the job's "
    "nodes around the run: up first, down at exit; job.steps runs your own commands "
    "instead, e.g. a server and a benchmark). "
    "Prints the job id on stdout."
)

STATUS_EPILOG = (
    "States: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT (walltime reached, or "
    "hpcinfer stopped before it: resubmit resumes), PREEMPTED, UNKNOWN. "
    "Examples: hpcinfer status runs/big; hpcinfer status 12345; "
    "hpcinfer status 12345.aurora-pbs --json"
)


def _scheduler_option(value: str | None) -> str | None:
    from hpcinfer.submit.schedulers import scheduler_class

    return None if value is None else scheduler_class(value).name


@flags.takes(*flags.RUN, *flags.JOB)
def submit(
    args: flags.SPEC_AND_INPUTS = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="pbs or slurm (default: job.scheduler, the profile's, or the one "
            "whose qsub/sbatch is on PATH)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the script; write and submit nothing.")
    ] = False,
    *,
    flags: flags.Flags,
) -> None:
    from hpcinfer.core.spec_loading import load_job_spec, split_spec_and_inputs
    from hpcinfer.submit.prepare import prepare_job
    from hpcinfer.submit.schedulers import get_scheduler

    cwd = Path.cwd()
    spec_file, inputs = split_spec_and_inputs(args or [])
    spec = load_job_spec(spec_file, inputs, flags.spec_fields(), flags.sets, cwd)
    run_flags = ("--retry-errors",) if flags["retry_errors"] else ()
    prepared = prepare_job(spec, cwd, _scheduler_option(scheduler), run_flags=run_flags)
    note = None if flags.quiet else err.print
    if note:
        note(f"scheduler: {escape(prepared.scheduler.describe())}")
    if spec.workers.profile is None and note:
        note(
            f"note: no workers.profile in the spec; ranks per node sized for this machine "
            f"({escape(prepared.profile.name)}, {prepared.profile.devices_per_node} devices). "
            "Set workers.profile (or job.ranks_per_node) for the compute nodes."
        )
    if dry_run:
        if flags.json_out:
            print(json.dumps({"job_id": None, "script": prepared.script}, indent=1))
        else:
            sys.stdout.write(prepared.script)
        if note:
            note(
                f"dry run: nothing written or submitted; without --dry-run this script goes "
                f"to {escape(str(prepared.files.script))} and is submitted."
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
    if flags.json_out:
        document = {"job_id": job_id, "script": str(prepared.files.script)}
        print(json.dumps(document, indent=1))
    else:
        print(job_id)
    if note:
        note(
            f"submitted {escape(str(prepared.files.script))} as job {escape(job_id)}; "
            f"follow it with: hpcinfer status {escape(job_id)}"
        )


def _scheduler_for(value: str | None) -> Any:
    from hpcinfer.submit.schedulers import detect_scheduler, get_scheduler

    return get_scheduler(_scheduler_option(value) or detect_scheduler())


@flags.takes(*flags.OUTPUT_MODE)
def status(
    job: Annotated[
        str,
        typer.Argument(
            metavar="OUT_DIR|JOB_ID",
            help="The output directory of `hpcinfer run`, or the id `hpcinfer submit` printed.",
        ),
    ],
    scheduler: Annotated[
        str | None, typer.Option(help="pbs or slurm (default: the one on PATH).")
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Show a job: in an output directory, the run going on there or the one that ran
    (records done/failed/left, workers, rates, last errors); for a job id, the scheduler's
    state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...

    With --quiet it prints the state word only (for scripts)."""
    if Path(job).is_dir():
        _dir_status(Path(job), flags)
        return
    result = _scheduler_for(scheduler).status(job)
    if flags.json_out:
        print(json.dumps(result.as_dict(), indent=1))
        return
    if flags.quiet:
        print(result.state.value)
        return
    facts = [f"{result.scheduler} state {result.raw_state or '-'}"]
    if result.exit_code is not None:
        facts.append(f"exit code {result.exit_code}")
    if result.reason:
        facts.append(f"reason {result.reason}")
    print(f"job {result.job_id}: {result.state.value} ({', '.join(facts)})")
    if result.detail:
        print(f"  {result.detail}")


def _dir_status(out_dir: Path, flags: flags.Flags) -> None:
    from hpcinfer.run.figures import FIGURE_DEFINITIONS, duration_text
    from hpcinfer.run.job_status import job_status

    found = job_status(out_dir)
    if flags.json_out:
        print(json.dumps(found, indent=1))
        return
    if flags.quiet:
        print(found["state"])
        return
    lines = [f"job in {out_dir}: {found['state']} ({found.get('phase', '')})"]
    failed = found.get("records_failed")
    failed_text = (
        f"{failed} failed"
        if failed is not None
        else f"{found.get('records_failed_this_run', 0)} failed this run"
    )
    lines.append(
        f"  records: {found['records_done']} of {found['records_total']} done "
        f"({failed_text}), {found['records_left']} left"
    )
    if found.get("generation_s"):
        rate = f"  rates: {found.get('output_tokens_per_s') or 0:.0f} output tok/s"
        if found.get("records_per_s") is not None:
            rate += f", {found['records_per_s']:.1f} records/s"
        rate += f" over {found['generation_s']:.1f} s of generation"
        if found.get("eta_s") is not None:
            rate += f"; ETA {duration_text(found['eta_s'])}"
        if found.get("wall_s") is not None:
            rate += f"; wall time {found['wall_s']:.1f} s"
        lines.append(rate)
    if "pid" in found:
        lines.append(f"  run: pid {found['pid']} on {found['host']}")
    for w in found.get("workers", []):
        silent = f" {duration_text(w['silent_s'])}" if w.get("state") == "silent" else ""
        lines.append(
            f"  worker {w['worker']}{' on ' + w['host'] if w.get('host') else ''}: "
            f"{w['state']}{silent}, {w['records']} records, {w['errors']} errors"
        )
    if found.get("last_errors"):
        lines.append("  last errors:")
        lines += [f"    {e}" for e in found["last_errors"]]
    if found.get("message"):
        lines.append(f"  {found['message']}")
    lines.append("  (" + "; ".join(f"{k}: {v}" for k, v in FIGURE_DEFINITIONS.items()) + ")")
    print("\n".join(lines))


@flags.takes(*flags.OUTPUT_MODE)
def cancel(
    job_id: Annotated[str, typer.Argument(help="The id `hpcinfer submit` printed.")],
    scheduler: Annotated[
        str | None, typer.Option(help="pbs or slurm (default: the one on PATH).")
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Cancel a submitted job (scancel / qdel). Committed results stay; submit again to resume.

    Example: hpcinfer cancel 12345
    """
    batch = _scheduler_for(scheduler)
    batch.cancel(job_id)
    if flags.json_out:
        print(
            json.dumps(
                {"job_id": job_id.strip(), "scheduler": batch.name, "cancel_requested": True}
            )
        )
    elif not flags.quiet:
        print(f"cancel requested for job {job_id.strip()} ({batch.name})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `hpcinfer` app."""
    app.command(help=SUBMIT_HELP, epilog=SUBMIT_EPILOG)(submit)
    app.command(epilog=STATUS_EPILOG)(status)
    app.command()(cancel)
