"""The one duration parser: every time flag and spec field takes the same forms."""

from __future__ import annotations

import pytest

from hpcinfer.core.durations import (
    FORMS,
    DurationError,
    parse_duration,
    parse_walltime,
    scheduler_duration,
)
from hpcinfer.errors import SpecError
from hpcinfer.spec import build_spec

FORMS_TABLE = [
    ("90s", 90.0),
    ("45m", 2700.0),
    ("1.5h", 5400.0),
    ("2h", 7200.0),
    ("2d", 172800.0),
    ("1d", 86400.0),
    ("1h30m", 5400.0),
    ("1h 30m 10s", 5410.0),
    ("1d12h", 129600.0),
    (" 45m ", 2700.0),
    ("0.5m", 30.0),
    ("01:30:00", 5400.0),
    ("1:30:00", 5400.0),
    ("30:00", 1800.0),
    ("10:00", 600.0),
    ("1-00:00:00", 86400.0),
    ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5.0),
    ("2-12", 216000.0),
    ("1-02:30", 95400.0),
]


@pytest.mark.parametrize(("text", "seconds"), FORMS_TABLE)
def test_every_form_means_the_same_everywhere(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_walltime(text) == seconds  # --walltime takes every form --time-limit takes
    assert build_spec({"time_limit": text}).time_limit_seconds() == seconds


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("1.5", 1.5), (120, 120.0)])
def test_a_bare_number_is_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["garbage", "", "  ", "h", "m", "5x", "1:xx", "1:2:3:4", "-5m", "-1:00", "1h30", "2m1h"]
)
def test_garbage_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(DurationError, match="is not a duration") as info:
        parse_duration(text, what="--time-limit")
    message = str(info.value)
    assert message.startswith(f"--time-limit {text!r}")
    assert FORMS in message


def test_the_error_is_a_spec_error_and_a_value_error() -> None:
    """SpecError: the CLI prints it as a usage error; ValueError: pydantic names the field."""
    with pytest.raises(SpecError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_walltime_refuses_a_bare_number_and_says_why() -> None:
    with pytest.raises(DurationError) as info:
        parse_walltime("90")
    assert "Slurm reads them as minutes" in str(info.value) and "90m" in str(info.value)


@pytest.mark.parametrize("text", ["", "0:00:00", "0s", "-1", "UNLIMITED"])
def test_walltime_refuses_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(DurationError):
        parse_walltime(text)


def test_walltime_rounds_up_to_whole_seconds() -> None:
    assert parse_walltime("0.5s") == 1


def test_positive_refuses_zero() -> None:
    assert parse_duration("0s") == 0.0
    with pytest.raises(DurationError, match="greater than zero"):
        parse_duration("0s", positive=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5:07", 307.0),
        ("1:02:03", 3723.0),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5.0),
        ("1-02", 93600.0),
        ("1-02:30", 95400.0),
        ("3600", 3600.0),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
        ("-1:00", None),
        ("1:2:3:4", None),
    ],
)
def test_scheduler_output(text: str, seconds: float | None) -> None:
    """squeue's %L and qstat's walltime: a bare number is PBS's seconds; the rest is None."""
    assert scheduler_duration(text) == seconds


def test_time_limit_error_names_the_field() -> None:
    with pytest.raises(SpecError) as info:
        build_spec({"time_limit": "soon"})
    assert "time_limit" in str(info.value) and "'soon'" in str(info.value)
