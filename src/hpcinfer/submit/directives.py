"""What a job script's directives ask for, and the refusal of options a scheduler lacks.

Each scheduler writes its own lines (``BatchScheduler.directives``). Options the chosen
scheduler does not take are refused by name instead of being dropped, so a spec written for
Slurm does not silently lose its partition when submitted to PBS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcinfer import script_values as checks
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import JobScriptSpec


@dataclass(frozen=True)
class Request:
    """What the directives ask for, with the defaults already resolved."""

    job: JobScriptSpec
    ranks_per_node: int
    gpus_per_node: int
    log_dir: Path  # where the scheduler writes the job's stdout and stderr
    other_schedulers: tuple[str, ...] = ()  # named in refusals: submit with one of these

    def log_path(self, name: str) -> str:
        """A file in log_dir, checked for the directive parsers (the name is ours)."""
        return checks.check_directive_path(str(self.log_dir), "job directory") + "/" + name


def refuse(req: Request, fields: dict[str, str], scheduler: str) -> None:
    """Refuse each of ``fields`` the job sets: ``scheduler`` does not take it (the value
    says what to do instead)."""
    others = " or ".join(f"--scheduler {name}" for name in req.other_schedulers)
    for name, instead in fields.items():
        if getattr(req.job, name):
            raise SpecError(
                f"job.{name} is not a {scheduler.upper()} option; {instead}, or submit with "
                f"{others}"
            )
