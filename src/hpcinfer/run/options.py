"""How one `run_job` call behaves, and where its output goes.

Apart from `run.job` so the fleet wrapper (`run.fleet_job`), which `run_job` calls, can use
them without importing `run.job` back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcinfer.core.stop import StopSignal
from hpcinfer.spec import JobSpec


@dataclass
class RunOptions:
    """How this invocation behaves; none of it changes what the rows contain."""

    restart: bool = False
    retry_errors: bool = False
    """Rerun the error rows of the output directory (and units never run), keep the ok rows."""
    quiet: bool = False
    cwd: Path = field(default_factory=Path.cwd)
    stop: StopSignal | None = None
    """Drain (then abort) on request; the CLI feeds it from SIGINT/SIGTERM."""
    started: float | None = None
    """`time.monotonic()` at the run's start, set by `run_job`: wall time counts from here
    (a server fleet's start-up included)."""
    on_note: Callable[[str], None] | None = None
    """Told what the job is about to do (the --retry-errors plan); the library prints
    nothing itself, the CLI shows these unless --quiet/--json."""


def output_dir(spec: JobSpec, cwd: Path) -> Path:
    out_dir = Path(spec.output.dir)
    return out_dir if out_dir.is_absolute() else cwd / out_dir
