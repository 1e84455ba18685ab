"""The scheduler registry: generic submit code uses any registered scheduler by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import get_args

import pytest

from hpcinfer.cluster import resolve_profile
from hpcinfer.cluster.hardware import JobEnvironment
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import Scheduler
from hpcinfer.launch import LaunchRequest
from hpcinfer.spec import build_spec
from hpcinfer.submit.directives import Request, refuse
from hpcinfer.submit.prepare import absolute_spec
from hpcinfer.submit.render import JobFiles, render_job_script
from hpcinfer.submit.scheduler import BatchScheduler
from hpcinfer.submit.schedulers import (
    detect_scheduler,
    get_scheduler,
    register_scheduler,
    scheduler_names,
    unregister_scheduler,
)
from hpcinfer.submit.states import JobState, JobStatus


class ToyScheduler(BatchScheduler):
    """A scheduler no cluster runs: `toyq` submits, jobs start ranks with `local`."""

    name = "toy"
    title = "Toy"
    program = "toyq"
    cancel_program = "toydel"
    script_name = "job.toy"
    template = "job.slurm.j2"  # reuses a shipped layout; the values are the toy's own
    shebang = "#!/bin/sh"
    job_id_var = "TOY_JOB"
    run_launcher = "local"

    def directives(self, req: Request) -> list[str]:
        refuse(req, {"queue": "the toy has one queue"}, self.name)
        return [f"#TOY nodes={req.job.nodes} ranks={req.ranks_per_node}"]

    def launch(self, request: LaunchRequest) -> list[str]:
        return ["toyrun", f"-n{request.nodes * request.ranks_per_node}", *request.command]

    def submit(self, script: Path, resubmits_left: int, pass_env: Iterable[str] = ()) -> str:
        return "1.toy"

    def status(self, job_id: str) -> JobStatus:
        return JobStatus(job_id, self.name, JobState.RUNNING, "R")


@pytest.fixture
def toy() -> Iterator[type[ToyScheduler]]:
    register_scheduler(ToyScheduler)
    yield ToyScheduler
    unregister_scheduler(ToyScheduler.name)


def test_the_spec_and_profiles_take_exactly_the_registered_names() -> None:
    """job.scheduler and a profile's job_env.scheduler are checked when read (the profile
    below submit cannot ask the registry), so their lists must be the registry's."""
    assert sorted(get_args(Scheduler)) == scheduler_names()
    field = JobEnvironment.model_fields["scheduler"].annotation
    assert sorted(get_args(get_args(field)[0])) == scheduler_names()


def test_an_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(SpecError, match="--scheduler 'lsf': choose pbs or slurm"):
        get_scheduler("lsf")


def test_a_registered_scheduler_renders_through_the_generic_path(
    toy: type[ToyScheduler], tmp_path: Path
) -> None:
    spec = build_spec(
        {"inputs": {"paths": ["p.jsonl"]}, "output": {"dir": "out"}, "job": {"nodes": 2}},
        "test spec",
    )
    spec = absolute_spec(spec, tmp_path)
    files = JobFiles.for_spec(spec, "toy")
    script = render_job_script(spec, "toy", resolve_profile("cpu"), files, tmp_path, ["hpcinfer"])
    lines = script.splitlines()
    assert files.script == tmp_path / "out" / "job" / "job.toy"
    assert lines[0] == "#!/bin/sh"
    assert "#TOY nodes=2 ranks=2" in lines
    assert 'job_id="${TOY_JOB:-unknown}"' in lines
    launch = next(line for line in lines if line.startswith("toyrun -n4 hpcinfer run "))
    assert launch.endswith("--launcher local")
    assert detect_scheduler(lambda program: "/bin/x" if program == "toyq" else None) == "toy"


def test_a_refused_option_names_every_other_scheduler(
    toy: type[ToyScheduler], tmp_path: Path
) -> None:
    spec = build_spec(
        {"inputs": {"paths": ["p.jsonl"]}, "output": {"dir": "out"}, "job": {"queue": "q"}},
        "test spec",
    )
    with pytest.raises(
        SpecError,
        match="not a TOY option; the toy has one queue, or submit with "
        "--scheduler pbs or --scheduler slurm",
    ):
        files = JobFiles.for_spec(spec, "toy")
        render_job_script(spec, "toy", resolve_profile("cpu"), files, tmp_path)
