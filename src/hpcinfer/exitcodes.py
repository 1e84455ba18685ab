"""Exit codes of `hpcinfer run`, documented in the README and `hpcinfer run --help`."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a script calling hpcinfer can branch on."""

    OK = 0
    """Every record completed."""
    FAILED = 1
    """The run failed as a whole (engine crash, every worker died); see the log named."""
    USAGE = 2
    """Bad spec, bad flags, unusable input path, or a resume conflict; nothing ran."""
    RECORD_ERRORS = 3
    """The run finished; some records are error rows (status "error" in results.jsonl)."""
    INCOMPLETE = 4
    """Stopped early (signal or time limit); committed work is kept: rerun to resume."""
