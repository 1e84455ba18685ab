"""Batch job scripts for profiling experiments: one per experiment, for PBS or Slurm.

Built from the submit machinery (the scheduler registry's directives and launchers, the
hardware profile's site environment, the same quoting rules), so a profiling job asks for
its nodes and GPUs the way `hpcinfer submit` does. The device count comes from the plan and
the hardware profile: nodes = ceil(world_size / devices per node). The job runs
`hpcinfer profile run CONFIG` once (vLLM starts its own TP/PP workers). `profile run`
drives one node's engine, so a plan larger than one node is refused here, before a job
waits in the queue to fail: started once per node, it would profile independent copies.
A profiled run is not resumable, so these scripts do not resubmit themselves.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hpcinfer import script_values as checks
from hpcinfer.cluster.hardware import HardwareProfile
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import JobScriptSpec
from hpcinfer.profile.experiment import ExperimentConfig
from hpcinfer.submit.directives import Request
from hpcinfer.submit.environment import environment_lines, merge_environment
from hpcinfer.submit.schedulers import get_scheduler, scheduler_class, scheduler_names

LOGS = "logs"
DEFAULT_JOB_NAME = "hpcinfer-profile"


@dataclass(frozen=True)
class ProfileJob:
    """One experiment's job script, rendered (nothing written yet)."""

    experiment_id: str
    config: Path
    script_path: Path
    log_dir: Path
    nodes: int
    script: str


def nodes_for(experiment: ExperimentConfig, hardware: HardwareProfile) -> int:
    """Nodes the plan needs: ceil(world_size / the profile's devices per node)."""
    per_node = hardware.devices_per_node
    if per_node < 1:
        raise SpecError(f"hardware profile {hardware.name!r} has no devices per node")
    return math.ceil(experiment.parallelism.world_size / per_node)


def script_name(experiment_id: str, scheduler: str, nsys: bool) -> str:
    """'E1.2_llama8b_tp2.slurm'; the nsys variant 'E1.2_llama8b_tp2.nsys.slurm'."""
    return f"{experiment_id}{'.nsys' if nsys else ''}.{scheduler}"


def _job_name(experiment_id: str) -> str:
    name = experiment_id[:63]
    return name if checks.JOB_NAME.fullmatch(name) else DEFAULT_JOB_NAME


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpcinfer.profile", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # a shell script: every value arrives quoted or checked
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_profile_job(
    experiment: ExperimentConfig,
    config: Path,
    scheduler_name: str,
    hardware: HardwareProfile,
    out_dir: Path,
    workdir: Path,
    job: JobScriptSpec | None = None,
    nsys: bool = False,
    hpcinfer: list[str] | None = None,
) -> ProfileJob:
    """The script for one experiment; `config`, `out_dir` and `workdir` must be absolute."""
    for path, what in ((config, "the config"), (out_dir, "-o"), (workdir, "the working folder")):
        if not path.is_absolute() or checks.has_control(str(path)):
            raise SpecError(
                f"{what} {str(path)!r}: a job script needs an absolute path without control "
                "characters (newlines, tabs); rename the folder"
            )
    scheduler = get_scheduler(scheduler_name)
    nodes = nodes_for(experiment, hardware)
    if nodes > 1:
        raise SpecError(
            f"experiment {experiment.experiment_id}: its plan needs "
            f"{experiment.parallelism.world_size} devices, more than one node of "
            f"{hardware.name!r} has ({hardware.devices_per_node}); profile run drives one "
            "node's vLLM engine (across nodes vLLM needs its Ray backend, which profile run "
            "does not start): make tp x pp x dp at most "
            f"{hardware.devices_per_node}, or name a --profile with more devices per node"
        )
    base = job or JobScriptSpec()
    spec = base.model_copy(
        update={"nodes": nodes, "name": _job_name(experiment.experiment_id), "resubmit": 0}
    )
    log_dir = out_dir / LOGS / experiment.experiment_id
    gpus = spec.gpus_per_node
    if gpus is None:
        gpus = hardware.gpus_per_node if scheduler.requests_gpus else 0
    request = Request(
        job=spec,
        ranks_per_node=1,
        gpus_per_node=gpus,
        log_dir=log_dir,
        other_schedulers=tuple(n for n in scheduler_names() if n != scheduler.name),
    )
    try:
        directives = scheduler.directives(request)
    except SpecError as exc:
        raise SpecError(f"{exc} (experiment {experiment.experiment_id})") from None
    env = merge_environment(spec, hardware)
    command = (
        ["hpcinfer"] if env.activates else list(hpcinfer or [sys.executable, "-m", "hpcinfer"])
    )
    run = [*command, "profile", "run", str(config), *(["--nsys"] if nsys else [])]
    text = (
        _templates()
        .get_template("profile_job.sh.j2")
        .render(
            shebang=scheduler.shebang,
            directives=directives,
            experiment_id=experiment.experiment_id,
            config=shlex.quote(str(config)),
            nsys=nsys,
            world_size=experiment.parallelism.world_size,
            nodes=nodes,
            env_lines=environment_lines(env),
            workdir=shlex.quote(str(workdir)),
            cd_error=shlex.quote(f"cannot cd to {workdir}"),
            job_id_var=scheduler.job_id_var,
            launch=shlex.join(run),
        )
    )
    path = out_dir / script_name(
        experiment.experiment_id, scheduler_class(scheduler_name).name, nsys
    )
    return ProfileJob(experiment.experiment_id, config, path, log_dir, nodes, text)


def write_profile_job(job: ProfileJob) -> None:
    """The script (executable) and the folder its scheduler log goes to, which the
    scheduler does not create."""
    from hpcinfer.outputs.atomic import write_text_atomic

    job.log_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job.script_path, job.script)
    job.script_path.chmod(0o744)
