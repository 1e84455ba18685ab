"""A walltime in each scheduler's spelling (read from the user's text by
`hpcinfer.core.durations.parse_walltime`, which refuses a bare number)."""

from __future__ import annotations


def pbs_walltime(seconds: int) -> str:
    """PBS: HH:MM:SS, hours past 24 allowed."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def slurm_time(seconds: int) -> str:
    """Slurm: HH:MM:SS under a day, D-HH:MM:SS from a day on."""
    days, rest = divmod(seconds, 86400)
    clock = pbs_walltime(rest)
    return f"{days}-{clock}" if days else clock
