"""Walltime in, walltime out: one reading of the user's text, one spelling per scheduler.

A bare number is refused: Slurm reads ``--time=90`` as minutes, PBS reads ``walltime=90``
as seconds, and guessing wrong either wastes an allocation or kills the job early.
"""

from __future__ import annotations

import re

from hpcinfer.cluster.allocation import parse_scheduler_duration

_UNITS = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_walltime(text: str) -> int:
    """Seconds from 'HH:MM:SS', 'MM:SS', 'D-HH:MM:SS', or units: '90m', '2h', '1h30m', '1d'."""
    value = text.strip()
    seconds: float | None = None
    if ":" in value or "-" in value:
        seconds = parse_scheduler_duration(value)
    else:
        match = _UNITS.fullmatch(value)
        if value and match and any(match.groups()):
            days, hours, minutes, secs = (int(g or 0) for g in match.groups())
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds is None or seconds <= 0:
        raise ValueError(
            f"walltime {text!r} is not a duration; write HH:MM:SS (01:00:00), D-HH:MM:SS, or "
            "with units (90m, 2h, 1h30m); bare numbers are refused because Slurm reads them "
            "as minutes and PBS as seconds"
        )
    return int(seconds)


def pbs_walltime(seconds: int) -> str:
    """PBS: HH:MM:SS, hours past 24 allowed."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def slurm_time(seconds: int) -> str:
    """Slurm: HH:MM:SS under a day, D-HH:MM:SS from a day on."""
    days, rest = divmod(seconds, 86400)
    clock = pbs_walltime(rest)
    return f"{days}-{clock}" if days else clock
