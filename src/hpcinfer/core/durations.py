"""One reading of a length of time, for every time flag and spec field.

`--time-limit`, `--walltime`, `--ready-timeout`, `time_limit:` and the rest all take the same
forms, so what works in one place works in every other: units (`90s`, `45m`, `1.5h`, `2d`,
`1h30m`), clocks as schedulers print them (`MM:SS`, `HH:MM:SS`, `D-HH:MM:SS`, `D-HH`), and a
bare number as seconds. A caller for whom a bare number is ambiguous (a walltime: Slurm reads
`--time=90` as minutes, PBS `walltime=90` as seconds) refuses it with `bare_seconds=False`.
"""

from __future__ import annotations

import math
import re

from hpcinfer.errors import SpecError

FORMS = "90s, 45m, 1.5h, 2d, 1h30m, 01:30:00 (HH:MM:SS) or 1-12:00:00 (D-HH:MM:SS)"
"""The accepted forms, as error messages and help texts list them."""

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_UNITS = re.compile(
    rf"(?:({_NUMBER})\s*d)?\s*(?:({_NUMBER})\s*h)?\s*(?:({_NUMBER})\s*m)?\s*(?:({_NUMBER})\s*s)?"
)
_BARE = re.compile(_NUMBER)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class DurationError(SpecError, ValueError):
    """Text that is not a duration. A ValueError too, so pydantic validators report it as a
    field error with the field's path."""


def parse_duration(
    text: str | float | int,
    *,
    what: str = "duration",
    bare_seconds: bool = True,
    bare_refusal: str = "",
    positive: bool = False,
) -> float:
    """Seconds from any accepted form (see FORMS); a number (int/float) is seconds.

    `what` names the value in the error ('--walltime', 'time_limit'). With
    `bare_seconds=False` a bare number is refused, `bare_refusal` saying why. With
    `positive=True` zero is refused too. Raises DurationError naming the accepted forms.
    """
    seconds = _seconds(text, bare_seconds)
    if seconds is None or (positive and seconds <= 0):
        if not bare_seconds and isinstance(text, str) and _BARE.fullmatch(text.strip()):
            why = f" ({bare_refusal})" if bare_refusal else ""
            number = text.strip()
            raise DurationError(
                f"{what} {text!r} has no unit{why}: write {number}m for minutes or {number}s "
                f"for seconds; the forms are {FORMS}"
            )
        positive_note = " greater than zero" if positive else ""
        raise DurationError(
            f"{what} {text!r} is not a duration{positive_note}; write {FORMS}"
            + ("" if not bare_seconds else ", or a number of seconds")
        )
    return seconds


def _seconds(text: str | float | int, bare_seconds: bool) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text) if bare_seconds and text >= 0 else None
    value = text.strip()
    if not value:
        return None
    if _BARE.fullmatch(value):
        return float(value) if bare_seconds else None
    if ":" in value or "-" in value:
        return _clock(value)
    match = _UNITS.fullmatch(value)
    if match is None or not any(match.groups()):
        return None
    return sum(
        float(number) * _UNIT_SECONDS[unit]
        for number, unit in zip(match.groups(), "dhms", strict=True)
        if number
    )


def _clock(value: str) -> float | None:
    """'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS' (Slurm's and PBS's spellings).

    Without a day the fields count from the right (seconds last); after a day, from the left
    (hours first), as Slurm reads them."""
    match = _CLOCK.fullmatch(value)
    if match is None:
        return None
    days, *fields = match.groups()
    numbers = [int(f) for f in fields if f is not None]
    if days is None and len(numbers) == 1:
        return None  # a bare number is not a clock (handled, or refused, by the caller)
    if days is not None:
        numbers += [0] * (3 - len(numbers))
    else:
        numbers = [0] * (3 - len(numbers)) + numbers
    hours, minutes, seconds = numbers
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def scheduler_duration(text: str) -> float | None:
    """A duration a scheduler printed (squeue's %L, qstat's walltime), or None for its
    non-durations ('UNLIMITED', 'NOT_SET', 'INVALID', negative values)."""
    try:
        return parse_duration(text)
    except DurationError:
        return None


BARE_NUMBER_REFUSAL = (
    "bare numbers are refused because Slurm reads them as minutes and PBS as seconds"
)


def parse_walltime(text: str) -> int:
    """Whole seconds (rounded up) of a walltime in any duration form but a bare number: Slurm
    reads ``--time=90`` as minutes, PBS ``walltime=90`` as seconds, and guessing wrong either
    wastes an allocation or kills the job early."""
    seconds = parse_duration(
        text, what="walltime", bare_seconds=False, bare_refusal=BARE_NUMBER_REFUSAL, positive=True
    )
    return math.ceil(seconds)
