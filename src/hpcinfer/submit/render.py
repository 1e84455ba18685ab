"""A complete job script for any scheduler: directives, environment, launcher line, resubmission.

The scheduler (``submit.schedulers``) supplies its directives, launcher, template and
shebang; this module never branches on its name. The layout lives in Jinja2 templates
(``templates/job.pbs.j2``, ``job.slurm.j2``); every value they place arrives here already
quoted or checked, so the templates hold no quoting decisions. Launcher lines are joined
with ``shlex.join``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hpcinfer.cluster import HardwareProfile, plan_placement
from hpcinfer.engines.kinds import kind_of
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import JobScriptSpec
from hpcinfer.launch import LaunchRequest
from hpcinfer.spec import JobSpec
from hpcinfer.submit import ray_bracket, steps
from hpcinfer.submit.directives import Request
from hpcinfer.submit.environment import environment_lines, merge_environment
from hpcinfer.submit.scheduler import BatchScheduler
from hpcinfer.submit.schedulers import get_scheduler, scheduler_class, scheduler_names

JOB_DIR_NAME = "job"
SPEC_NAME = "spec.yaml"


@dataclass(frozen=True)
class JobFiles:
    """Where a submitted job keeps its files: ``<output dir>/job/``, stable across resubmits."""

    job_dir: Path
    scheduler: str

    @classmethod
    def for_spec(cls, spec: JobSpec, scheduler: str) -> JobFiles:
        return cls(Path(spec.output.dir) / JOB_DIR_NAME, scheduler)

    @property
    def spec(self) -> Path:
        return self.job_dir / SPEC_NAME

    @property
    def script(self) -> Path:
        return self.job_dir / scheduler_class(self.scheduler).script_name


def default_hpcinfer() -> list[str]:
    """The hpcinfer that is running now, by absolute path, so the job uses the same install."""
    return [sys.executable, "-m", "hpcinfer"]


def ranks_per_node(spec: JobSpec, profile: HardwareProfile) -> int:
    """The spec's, else one rank per device group of the profile (as `hpcinfer plan` shows)."""
    if spec.job.ranks_per_node is not None:
        return spec.job.ranks_per_node
    plan = plan_placement(profile, workers=spec.workers.count, tp=spec.engine.tensor_parallel_size)
    return len(plan.placements)


def _gpus_per_node(spec: JobSpec, profile: HardwareProfile, scheduler: BatchScheduler) -> int:
    if spec.job.gpus_per_node is not None:
        return spec.job.gpus_per_node
    return profile.gpus_per_node if scheduler.requests_gpus else 0


def launch_argv(
    spec: JobSpec,
    scheduler: BatchScheduler,
    spec_path: Path,
    hpcinfer: list[str],
    ranks: int,
    run_options: tuple[str, ...] = (),
) -> list[str]:
    """`mpiexec ... hpcinfer run SPEC` (PBS), `srun ... hpcinfer run SPEC` (Slurm); a
    one-shot server fleet (engine vllm-server) runs once and starts one serve rank per node
    itself, so its line is the bare command."""
    if spec.job.ray:  # one driver here; its workers are Ray actors on the job's cluster
        return [*hpcinfer, "run", str(spec_path), "--launcher", ray_bracket.RUN_LAUNCHER,
                *run_options]  # fmt: skip
    command = [*hpcinfer, "run", str(spec_path), "--launcher", scheduler.run_launcher]
    if kind_of(spec).runs_once:
        if spec.job.nodes > 1:
            from hpcinfer.serve.plan import check_reachable

            check_reachable(spec.serve.host, multi_host=True)
        return [*command, *run_options]
    request = LaunchRequest(
        command=[*command, *run_options],
        nodes=spec.job.nodes,
        ranks_per_node=ranks,
        cpu_bind=scheduler.cpu_bind(spec.job.cpu_bind),
    )
    return scheduler.launch(request)


def stage_lines(
    spec: JobSpec, scheduler: BatchScheduler, hpcinfer: list[str]
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
    step = scheduler.launch(request)
    model, env = staged_location(spec.model, to)
    fail = shlex.quote(f"staging {spec.model} to {to} failed")
    lines = [f"{shlex.join(step)} || hpcinfer_fail {fail}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return lines, ("--model", model)


def bracket_lines(job: JobScriptSpec, scheduler: BatchScheduler, hpcinfer: list[str]) -> list[str]:
    """What comes before the run or the steps: the exit handler that stops background steps
    and the Ray cluster, and `ray up` (empty for a plain run: its script is unchanged)."""
    cleanup = steps.stop_background_lines() if job.steps else []
    if not job.ray:
        return steps.exit_handler(cleanup)
    cleanup += ray_bracket.ray_down_lines(hpcinfer)
    return [
        *ray_bracket.ray_export_lines(),
        *steps.exit_handler(cleanup),
        ray_bracket.ray_up_line(job, scheduler, hpcinfer),
    ]


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpcinfer.submit", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # a shell script, not HTML: values arrive quoted for the shell
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def refuse_foreign_directives(lines: list[str], scheduler: BatchScheduler) -> None:
    """An extra directive spelled as only another scheduler spells it ('-l walltime=1:00:00'
    under Slurm, '--mail-type=END' under PBS) is refused naming that scheduler, instead of
    being written where the chosen one would reject or misread it."""
    for line in lines:
        for name in scheduler_names():
            other = scheduler_class(name)
            if other.name == scheduler.name or not line.startswith(other.own_directive_prefixes):
                continue
            raise SpecError(
                f"job.extra_directives {line!r} is a {other.title} option, not a "
                f"{scheduler.title} one: rewrite it for {scheduler.title}, or submit with "
                f"--scheduler {other.name}"
            )


def render_job_script(
    spec: JobSpec,
    scheduler_name: str,
    profile: HardwareProfile,
    files: JobFiles,
    workdir: Path,
    hpcinfer: list[str] | None = None,
    run_flags: tuple[str, ...] = (),
) -> str:
    """The whole script for ``spec`` (its paths already absolute), as text.

    ``hpcinfer`` is the command that starts hpcinfer when the script activates no Python
    environment (default: this interpreter's ``-m hpcinfer``); after an activation it is
    plain ``hpcinfer`` from that environment.
    """
    scheduler = get_scheduler(scheduler_name)
    env = merge_environment(spec.job, profile)
    ranks = ranks_per_node(spec, profile)
    request = Request(
        job=spec.job,
        ranks_per_node=ranks,
        gpus_per_node=_gpus_per_node(spec, profile, scheduler),
        log_dir=files.job_dir,
        other_schedulers=tuple(name for name in scheduler_names() if name != scheduler.name),
    )
    refuse_foreign_directives(spec.job.extra_directives, scheduler)
    directives = scheduler.directives(request)
    command = ["hpcinfer"] if env.activates else list(hpcinfer or default_hpcinfer())
    if spec.job.steps:
        launch = "\n".join([*steps.hpcinfer_function(command), *steps.step_lines(spec.job.steps)])
    else:
        staging, run_options = stage_lines(spec, scheduler, command)
        run_options = (*run_options, *run_flags)
        run_line = launch_argv(spec, scheduler, files.spec, command, ranks, run_options)
        launch = "\n".join([*staging, shlex.join(run_line)])
    template = _templates().get_template(scheduler.template)
    return template.render(
        shebang=scheduler.shebang,
        directives=directives,
        resubmit=spec.job.resubmit,
        env_lines=environment_lines(env),
        job_dir=shlex.quote(str(files.job_dir)),
        script=shlex.quote(str(files.script)),
        job_id_expr=f"${{{scheduler.job_id_var}:-unknown}}",
        workdir=shlex.quote(str(workdir)),
        cd_error=shlex.quote(f"cannot cd to {workdir}"),
        steps=bool(spec.job.steps),
        ray=spec.job.ray,
        bracket=bracket_lines(spec.job, scheduler, command),
        launch=launch,
        pass_env=" ".join(shlex.quote(name) for name in spec.job.pass_env),
    )
