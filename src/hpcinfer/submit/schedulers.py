"""The batch schedulers hpcinfer knows, by name: the one place that lists them.

Generic code asks here for a scheduler by name (``--scheduler``, ``job.scheduler``, the
profile's) and then calls its class; it never branches on the name. A new scheduler is
one ``BatchScheduler`` subclass in one module, registered with ``register_scheduler``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from hpcinfer.errors import SpecError
from hpcinfer.submit.pbs import PbsScheduler
from hpcinfer.submit.scheduler import BatchScheduler, CommandRunner, SchedulerError, run_command
from hpcinfer.submit.slurm import SlurmScheduler

_REGISTRY: dict[str, type[BatchScheduler]] = {}


def register_scheduler(cls: type[BatchScheduler]) -> type[BatchScheduler]:
    """Make ``cls`` available as ``--scheduler cls.name`` (usable as a class decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


def unregister_scheduler(name: str) -> None:
    _REGISTRY.pop(name, None)


register_scheduler(SlurmScheduler)
register_scheduler(PbsScheduler)


def scheduler_names() -> list[str]:
    """The registered names, sorted (as help and errors list them)."""
    return sorted(_REGISTRY)


def scheduler_class(name: str) -> type[BatchScheduler]:
    """The class registered as ``name``; an error listing the registered names if none is."""
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = " or ".join(scheduler_names())
        raise SpecError(f"--scheduler {name!r}: choose {choices}") from None


def get_scheduler(name: str, runner: CommandRunner = run_command) -> BatchScheduler:
    return scheduler_class(name)(runner)


def detect_scheduler(which: Callable[[str], str | None] = shutil.which) -> str:
    """The scheduler whose submit command is on PATH; an error if none or several are."""
    found = [cls for cls in _REGISTRY.values() if which(cls.program)]
    if len(found) == 1:
        return found[0].name
    if not found:
        programs = " nor ".join(f"{cls.program} ({cls.title})" for cls in _REGISTRY.values())
        raise SchedulerError(
            f"neither {programs} is on PATH; run on the cluster's login node, or pass "
            f"--scheduler {'|'.join(scheduler_names())} (with --dry-run to only print the "
            "script)"
        )
    programs = " and ".join(cls.program for cls in found)
    choices = " or ".join(f"--scheduler {name}" for name in sorted(cls.name for cls in found))
    raise SchedulerError(
        f"both {programs} are on PATH; pass {choices} (or set job.scheduler in the spec)"
    )
