"""Walltime in, walltime out: the user's text read by the one duration parser, one spelling per
scheduler.

A bare number is refused: Slurm reads ``--time=90`` as minutes, PBS reads ``walltime=90``
as seconds, and guessing wrong either wastes an allocation or kills the job early.
"""

from __future__ import annotations

import math

from hpcinfer.core.durations import parse_duration

BARE_NUMBER_REFUSAL = (
    "bare numbers are refused because Slurm reads them as minutes and PBS as seconds"
)


def parse_walltime(text: str) -> int:
    """Whole seconds (rounded up) of a walltime in any duration form but a bare number."""
    seconds = parse_duration(
        text, what="walltime", bare_seconds=False, bare_refusal=BARE_NUMBER_REFUSAL, positive=True
    )
    return math.ceil(seconds)


def pbs_walltime(seconds: int) -> str:
    """PBS: HH:MM:SS, hours past 24 allowed."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def slurm_time(seconds: int) -> str:
    """Slurm: HH:MM:SS under a day, D-HH:MM:SS from a day on."""
    days, rest = divmod(seconds, 86400)
    clock = pbs_walltime(rest)
    return f"{days}-{clock}" if days else clock
