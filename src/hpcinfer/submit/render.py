"""A complete job script per scheduler: directives, environment, launcher line, resubmission.

The layout lives in Jinja2 templates (``templates/job.pbs.j2``, ``job.slurm.j2``); every
value they place arrives here already quoted or checked, so the templates hold no quoting
decisions. The launcher line comes from the pure functions of ``hpcinfer.launch`` (PALS or
Hydra ``mpiexec`` under PBS, ``srun`` under Slurm), joined with ``shlex.join``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hpcinfer.cluster import HardwareProfile, plan_placement
from hpcinfer.errors import SpecError
from hpcinfer.launch import LaunchRequest, mpiexec_mpich, srun
from hpcinfer.spec import JobSpec
from hpcinfer.submit.directives import Request, pbs_directives, slurm_directives
from hpcinfer.submit.environment import environment_lines, merge_environment
from hpcinfer.submit.options import Scheduler

SCRIPT_NAMES: dict[Scheduler, str] = {"pbs": "job.pbs", "slurm": "job.slurm"}
JOB_DIR_NAME = "job"
SPEC_NAME = "spec.yaml"
# `hpcinfer run --launcher`: which launcher started the ranks (each rank joins the one job).
RUN_LAUNCHER: dict[Scheduler, str] = {"pbs": "mpi", "slurm": "srun"}
_JOB_ID_VAR: dict[Scheduler, str] = {"pbs": "PBS_JOBID", "slurm": "SLURM_JOB_ID"}
# PBS runs the script in a fresh login environment (module is defined there); Slurm
# passes the submitting shell's environment on, which a login shell could undo.
_SHEBANG: dict[Scheduler, str] = {"pbs": "#!/bin/bash -l", "slurm": "#!/bin/bash"}


@dataclass(frozen=True)
class JobFiles:
    """Where a submitted job keeps its files: ``<output dir>/job/``, stable across resubmits."""

    job_dir: Path
    scheduler: Scheduler

    @classmethod
    def for_spec(cls, spec: JobSpec, scheduler: Scheduler) -> JobFiles:
        return cls(Path(spec.output.dir) / JOB_DIR_NAME, scheduler)

    @property
    def spec(self) -> Path:
        return self.job_dir / SPEC_NAME

    @property
    def script(self) -> Path:
        return self.job_dir / SCRIPT_NAMES[self.scheduler]


def default_hpcinfer() -> list[str]:
    """The hpcinfer that is running now, by absolute path, so the job uses the same install."""
    return [sys.executable, "-m", "hpcinfer"]


def ranks_per_node(spec: JobSpec, profile: HardwareProfile) -> int:
    """The spec's, else one rank per device group of the profile (as `hpcinfer plan` shows)."""
    if spec.job.ranks_per_node is not None:
        return spec.job.ranks_per_node
    plan = plan_placement(profile, workers=spec.workers.count, tp=spec.engine.tensor_parallel_size)
    return len(plan.placements)


def _cpu_bind(spec: JobSpec, scheduler: Scheduler) -> str | None:
    """PALS takes a list of core ranges per rank as ``list:0-7:8-15``; srun has no such form."""
    value = spec.job.cpu_bind
    if not isinstance(value, list):
        return value
    if scheduler == "slurm":
        raise SpecError(
            "job.cpu_bind as a list is PALS syntax (PBS); for srun write one string such as "
            "'cores' or 'map_cpu:0,8'"
        )
    return "list:" + ":".join(value)


def _gpus_per_node(spec: JobSpec, profile: HardwareProfile, scheduler: Scheduler) -> int:
    if spec.job.gpus_per_node is not None:
        return spec.job.gpus_per_node
    return profile.gpus_per_node if scheduler == "slurm" else 0


def launch_argv(
    spec: JobSpec,
    scheduler: Scheduler,
    spec_path: Path,
    hpcinfer: list[str],
    ranks: int,
    run_options: tuple[str, ...] = (),
) -> list[str]:
    """`mpiexec ... hpcinfer run SPEC` (PBS) or `srun ... hpcinfer run SPEC` (Slurm); a
    one-shot server fleet (engine vllm-server) runs once and starts one serve rank per node
    itself, so its line is the bare command."""
    command = [*hpcinfer, "run", str(spec_path), "--launcher", RUN_LAUNCHER[scheduler]]
    if spec.engine.kind == "vllm-server":
        if spec.job.nodes > 1:
            from hpcinfer.serve.plan import check_reachable

            check_reachable(spec.serve.host, multi_host=True)
        return [*command, *run_options]
    request = LaunchRequest(
        command=[*command, *run_options],
        nodes=spec.job.nodes,
        ranks_per_node=ranks,
        cpu_bind=_cpu_bind(spec, scheduler),
    )
    return mpiexec_mpich(request) if scheduler == "pbs" else srun(request)


def stage_lines(
    spec: JobSpec, scheduler: Scheduler, hpcinfer: list[str]
) -> tuple[list[str], tuple[str, ...]]:
    """With `job.stage_to`: the staging step (one rank per node) and the exports it implies,
    plus the `--model` the run must then use, so the run reads exactly what was staged."""
    to = spec.job.stage_to
    if to is None:
        return [], ()
    if spec.model is None:
        raise SpecError(
            "job.stage_to stages the spec's model, but the spec has no model: set model: to "
            "a model directory or an HF id in HF_HOME"
        )
    from hpcinfer.stage.layout import staged_location

    request = LaunchRequest(
        command=[*hpcinfer, "stage", spec.model, "--to", to], nodes=spec.job.nodes, ranks_per_node=1
    )
    step = mpiexec_mpich(request) if scheduler == "pbs" else srun(request)
    model, env = staged_location(spec.model, to)
    fail = shlex.quote(f"staging {spec.model} to {to} failed")
    lines = [f"{shlex.join(step)} || hpcinfer_fail {fail}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return lines, ("--model", model)


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpcinfer.submit", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # a shell script, not HTML: values arrive quoted for the shell
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_job_script(
    spec: JobSpec,
    scheduler: Scheduler,
    profile: HardwareProfile,
    files: JobFiles,
    workdir: Path,
    hpcinfer: list[str] | None = None,
) -> str:
    """The whole script for ``spec`` (its paths already absolute), as text.

    ``hpcinfer`` is the command that starts hpcinfer when the script activates no Python
    environment (default: this interpreter's ``-m hpcinfer``); after an activation it is
    plain ``hpcinfer`` from that environment.
    """
    env = merge_environment(spec.job, profile)
    ranks = ranks_per_node(spec, profile)
    request = Request(
        job=spec.job,
        ranks_per_node=ranks,
        gpus_per_node=_gpus_per_node(spec, profile, scheduler),
        log_dir=files.job_dir,
    )
    directives = pbs_directives(request) if scheduler == "pbs" else slurm_directives(request)
    command = ["hpcinfer"] if env.activates else list(hpcinfer or default_hpcinfer())
    staging, run_options = stage_lines(spec, scheduler, command)
    launch = "\n".join(
        [
            *staging,
            shlex.join(launch_argv(spec, scheduler, files.spec, command, ranks, run_options)),
        ]
    )
    template = _templates().get_template(f"{SCRIPT_NAMES[scheduler]}.j2")
    return template.render(
        shebang=_SHEBANG[scheduler],
        directives=directives,
        resubmit=spec.job.resubmit,
        env_lines=environment_lines(env),
        job_dir=shlex.quote(str(files.job_dir)),
        script=shlex.quote(str(files.script)),
        job_id_expr=f"${{{_JOB_ID_VAR[scheduler]}:-unknown}}",
        workdir=shlex.quote(str(workdir)),
        cd_error=shlex.quote(f"cannot cd to {workdir}"),
        launch=launch,
        pass_env=" ".join(shlex.quote(name) for name in spec.job.pass_env),
    )
