"""From a validated spec to the files a job needs: a resolved spec copy and the script.

The job runs later, elsewhere, maybe several times (resubmission), so it must not depend on
the directory the user submitted from or on the spec file staying unchanged: the copy in
``<output dir>/job/spec.yaml`` holds absolute paths, and the script names only that copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from hpcinfer.cluster import HardwareProfile, resolve_profile
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import Scheduler
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.spec import JobSpec, build_spec
from hpcinfer.submit.render import JobFiles, render_job_script
from hpcinfer.submit.schedulers import detect_scheduler, scheduler_class


@dataclass(frozen=True)
class PreparedJob:
    """Everything `submit` writes, rendered but not yet on disk (so --dry-run writes nothing)."""

    files: JobFiles
    spec: JobSpec
    spec_text: str
    script: str
    profile: HardwareProfile
    scheduler: SchedulerChoice

    def write(self) -> None:
        """Both files, atomically: a resubmission never reads half of a new script."""
        write_text_atomic(self.files.spec, self.spec_text)
        write_text_atomic(self.files.script, self.script)
        self.files.script.chmod(0o744)


def _absolute(value: str, cwd: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(cwd / path)))


def _is_local_path(value: str, cwd: Path) -> bool:
    """A model or profile named by path ('./m', '~/m', 'models/m' that exists), not an id."""
    return value.startswith(("./", "../", "~", "/")) or (cwd / value).exists()


def absolute_spec(spec: JobSpec, cwd: Path) -> JobSpec:
    """The same spec with every path absolute (globs stay globs), validated again."""
    data: dict[str, Any] = spec.model_dump(mode="json")
    inputs, output, workers, job = data["inputs"], data["output"], data["workers"], data["job"]
    inputs["paths"] = [_absolute(p, cwd) for p in inputs["paths"]]
    template = inputs.get("template")
    if isinstance(template, str) and template.startswith("@"):
        inputs["template"] = "@" + _absolute(template[1:], cwd)
    output["dir"] = _absolute(output["dir"], cwd)
    if output.get("local_dir"):
        output["local_dir"] = _absolute(output["local_dir"], cwd)
    if data.get("model") and _is_local_path(data["model"], cwd):
        data["model"] = _absolute(data["model"], cwd)
    profile = workers.get("profile")
    if profile and profile != "auto" and ("/" in profile or profile.endswith((".yaml", ".yml"))):
        workers["profile"] = _absolute(profile, cwd)
    if job.get("venv"):
        job["venv"] = _absolute(job["venv"], cwd)
    conda = job.get("conda_env")
    if conda and ("/" in conda or conda.startswith("~")):
        job["conda_env"] = _absolute(conda, cwd)
    return build_spec(data, "the resolved spec")


@dataclass(frozen=True)
class SchedulerChoice:
    """The scheduler a job is written for, and why that one (said to the user)."""

    name: str
    reason: str

    def describe(self) -> str:
        """'Slurm, because sbatch is on PATH': what `submit` notes and refusals repeat."""
        return f"{scheduler_class(self.name).title}, because {self.reason}"


def choose_scheduler(
    flag: str | None,
    spec: JobSpec,
    profile: HardwareProfile,
    which: Callable[[str], str | None] = shutil.which,
) -> SchedulerChoice:
    """--scheduler, else job.scheduler, else the profile's, else the one on PATH."""
    site = profile.job_env.scheduler if profile.job_env else None
    if flag:
        return SchedulerChoice(scheduler_class(flag).name, f"--scheduler {flag} was given")
    if spec.job.scheduler:
        return SchedulerChoice(spec.job.scheduler, "the spec's job.scheduler says so")
    if site:
        name = scheduler_class(site).name
        return SchedulerChoice(name, f"the hardware profile {profile.name} uses it")
    name = detect_scheduler(which)
    return SchedulerChoice(name, f"{scheduler_class(name).program} is on PATH")


def spec_yaml(spec: JobSpec) -> str:
    """The spec copy: non-default fields only, in the spec's own field order."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    header = "# Written by `hpcinfer submit`: the spec this job runs, with absolute paths.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def prepare_job(
    spec: JobSpec,
    cwd: Path,
    scheduler: str | None = None,
    hpcinfer: list[str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    run_flags: tuple[str, ...] = (),
) -> PreparedJob:
    """Resolve paths, choose the scheduler and render both files (nothing is written);
    `run_flags` (e.g. --retry-errors) go on the script's `hpcinfer run` line."""
    resolved = absolute_spec(spec, cwd)
    profile = resolve_profile(resolved.workers.profile)
    choice = choose_scheduler(scheduler, resolved, profile, which)
    resolved.job.scheduler = cast(Scheduler, choice.name)  # a registered name
    files = JobFiles.for_spec(resolved, choice.name)
    try:
        script = render_job_script(resolved, choice.name, profile, files, cwd, hpcinfer, run_flags)
    except SpecError as exc:
        raise SpecError(f"{exc}; the job is for {choice.describe()}") from None
    return PreparedJob(files, resolved, spec_yaml(resolved), script, profile, choice)
