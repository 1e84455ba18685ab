"""CLI command `hpcinfer profile submit CONFIG...`: one batch job script per experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.core.terminal import wide_console

err = wide_console(stderr=True)

SUBMIT_EPILOG = (
    "Examples: hpcinfer profile submit experiments/*.yaml --scheduler slurm --profile "
    "perlmutter --account m1234 --walltime 30m (writes experiments/E1.1_llama8b_tp1.slurm, "
    "...); add --nsys for the nsys variant (E1.1_llama8b_tp1.nsys.slurm), --submit to "
    "submit them too. Nodes per job: ceil(world size / devices per node of the hardware "
    "profile). Exit codes: 0 written (and submitted); 2 bad config, profile or option "
    "(named); 1 the scheduler refused a job."
)


@flags.takes(
    "out",
    "profile",
    "walltime",
    "account",
    "queue",
    *flags.OUTPUT_MODE,
    helps={
        "out": "Folder for the job scripts and the scheduler's logs (OUT/logs/<experiment_id>/) "
        "(default: beside each config)."
    },
)
def submit(
    configs: Annotated[
        list[Path],
        typer.Argument(metavar="CONFIG.yaml...", help="Experiment configs (profile grid)."),
    ],
    scheduler: Annotated[
        str | None,
        typer.Option(help="slurm or pbs (default: the hardware profile's, else the one on PATH)."),
    ] = None,
    nsys: Annotated[
        bool, typer.Option("--nsys", help="The variant that runs `profile run --nsys`.")
    ] = False,
    submit_jobs: Annotated[
        bool, typer.Option("--submit", help="Submit each script after writing it.")
    ] = False,
    *,
    flags: flags.Flags,
) -> None:
    """Write one job script per experiment that runs `hpcinfer profile run CONFIG`, asking
    for the nodes and GPUs its plan needs, into OUT (-o; default: beside each config);
    the scheduler's log goes to OUT/logs/<experiment_id>/."""
    from hpcinfer.cluster import resolve_profile
    from hpcinfer.job_script_spec import JobScriptSpec
    from hpcinfer.profile.experiment import load_experiment
    from hpcinfer.profile.jobs import render_profile_job, write_profile_job
    from hpcinfer.submit.schedulers import detect_scheduler, get_scheduler, scheduler_class

    hardware = resolve_profile(flags["profile"])
    site = hardware.job_env.scheduler if hardware.job_env else None
    chosen = scheduler_class(scheduler or site or detect_scheduler()).name
    job = JobScriptSpec(walltime=flags["walltime"], account=flags["account"], queue=flags["queue"])
    cwd = Path.cwd()
    jobs = []
    for config in configs:
        path = (cwd / config).resolve()
        experiment = load_experiment(path)
        out = (cwd / flags["out"]).resolve() if flags["out"] else path.parent
        jobs.append(render_profile_job(experiment, path, chosen, hardware, out, cwd, job, nsys))
    submitted: dict[str, str] = {}
    for prepared in jobs:
        write_profile_job(prepared)
        if submit_jobs:
            batch = get_scheduler(chosen)
            submitted[prepared.experiment_id] = batch.submit(prepared.script_path, 0, job.pass_env)
    if flags.json_out:
        rows = [
            {
                "experiment_id": j.experiment_id,
                "script": str(j.script_path),
                "nodes": j.nodes,
                "job_id": submitted.get(j.experiment_id),
            }
            for j in jobs
        ]
        print(json.dumps({"scheduler": chosen, "profile": hardware.name, "jobs": rows}, indent=1))
        return
    for prepared in jobs:
        job_id = submitted.get(prepared.experiment_id)
        print(f"{prepared.script_path}" + (f" {job_id}" if job_id else ""))
    if not flags.quiet:
        if flags["profile"] is None:
            err.print(
                f"note: no --profile; nodes sized for this machine ({escape(hardware.name)}, "
                f"{hardware.devices_per_node} devices per node). Give --profile for the "
                "compute nodes.",
                highlight=False,
            )
        what = "wrote and submitted" if submit_jobs else "wrote"
        err.print(f"{what} {len(jobs)} {escape(chosen)} job script(s)", highlight=False)


def register(group: typer.Typer) -> None:
    """Add `submit` to the `hpcinfer profile` group."""
    group.command(epilog=SUBMIT_EPILOG)(submit)
