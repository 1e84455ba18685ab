"""The error every rank raises when staging failed anywhere, so all ranks exit alike."""

from __future__ import annotations

from hpcinfer.errors import HpcinferError


class StageError(HpcinferError):
    """Staging failed on at least one rank; the message names the rank, file and fix.

    Raised on every rank with the same message and exit code (the agreed result), so a
    job script sees one status whichever rank's exit it looks at.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
