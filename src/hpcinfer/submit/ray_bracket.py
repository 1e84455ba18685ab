"""A Ray cluster around the job's run or steps (`job.ray`, `hpcinfer submit --ray`).

The script brings the cluster up with `hpcinfer ray up` through the scheduler's own
launcher (mpiexec under PBS, srun under Slurm), named after the job so two jobs on shared
nodes never meet, and writes its cluster file into the job directory, exported as
``HPCINFER_RAY_CLUSTER`` where the run and the steps (`serve --backend ray`, `run
--launcher ray`) find it. `hpcinfer ray down` runs from the script's exit handler
(``submit.steps``), so the cluster goes down however the job ends, and also after a `ray up`
that failed half-way.
"""

from __future__ import annotations

import shlex

from hpcinfer.job_script_spec import JobScriptSpec
from hpcinfer.submit.scheduler import BatchScheduler

CLUSTER_FILE = '"$job_dir/ray-$job_id.json"'
"""The cluster file: in the job directory (every node sees it), one per job id, so a
resubmitted job never reads its predecessor's cluster."""

RUN_LAUNCHER = "ray"
"""`hpcinfer run --launcher` inside a job with a Ray cluster: the workers are Ray actors."""


def ray_export_lines() -> list[str]:
    """The section's heading and the export of the cluster file, before the exit handler
    that reads it."""
    return [
        "# --- Ray cluster " + "-" * 71,
        "# `hpcinfer ray up` starts Ray on every node of the job, the head on this one, and",
        "# returns when each node has joined with its devices and the same Python, Ray, vLLM",
        "# and torch, or fails naming the node that did not. The exit handler takes the",
        "# cluster down (`hpcinfer ray down`) whichever way the script ends.",
        f"export HPCINFER_RAY_CLUSTER={CLUSTER_FILE}",
    ]


def ray_up_line(job: JobScriptSpec, scheduler: BatchScheduler, hpcinfer: list[str]) -> str:
    """`hpcinfer ray up` over the job's nodes; a failed one ends the job before anything
    runs on the cluster (the exit handler still stops what it started)."""
    argv = [*hpcinfer, "ray", "up", "--launcher", scheduler.run_launcher]
    if job.ray_gpus_per_node is not None:
        argv += ["--gpus-per-node", str(job.ray_gpus_per_node)]
    if job.ray_interface is not None:
        argv += ["--interface", job.ray_interface]
    up = shlex.join(argv) + ' --name "$job_id" --cluster-file "$HPCINFER_RAY_CLUSTER"'
    fail = shlex.quote("hpcinfer ray up failed (its message is above); nothing ran on the cluster")
    return f"{up} || hpcinfer_fail {fail}"


def ray_down_lines(hpcinfer: list[str]) -> list[str]:
    """Exit-handler lines: this job's cluster only; a failure is reported, the job's exit
    code kept."""
    down = shlex.join([*hpcinfer, "ray", "down"]) + ' --cluster-file "$HPCINFER_RAY_CLUSTER"'
    message = "hpcinfer ray down failed; stop what is left with: hpcinfer ray down --cluster-file"
    return [
        f'    {down} || echo {shlex.quote(message)} "$HPCINFER_RAY_CLUSTER" >&2',
    ]
