"""How long a command may take new work: the spec's time limit, else the scheduler's walltime
less a margin. `run` stops handing out units then; `serve` stops its servers."""

from __future__ import annotations

from hpcinfer.spec import JobSpec

WALLTIME_MARGIN_FRACTION = 0.1
WALLTIME_MARGIN_MIN_S = 60.0
WALLTIME_MARGIN_MAX_S = 900.0


def effective_time_limit(spec: JobSpec, remaining_s: float | None) -> tuple[float | None, str]:
    """The time limit in seconds and where it comes from ("time limit", "walltime", or ""
    for none): the spec's, else the job's remaining walltime less a margin (10%, between 1
    and 15 minutes) for draining work in flight and writing exports."""
    if spec.time_limit is not None:
        return spec.time_limit_seconds(), "time limit"
    if remaining_s is None:
        return None, ""
    margin = min(
        WALLTIME_MARGIN_MAX_S,
        max(WALLTIME_MARGIN_MIN_S, remaining_s * WALLTIME_MARGIN_FRACTION),
    )
    return max(remaining_s - margin, 0.0), "walltime"
