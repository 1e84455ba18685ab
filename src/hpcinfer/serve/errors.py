"""The error a server fleet raises when it cannot serve at all (no server came up, every one
died); one server's failure is a registry state (`failed`, `dead`) and a message, not this."""

from __future__ import annotations

from hpcinfer.errors import HpcinferError


class ServeError(HpcinferError):
    """No server of the fleet is usable; the message names each server's log and its tail."""

    exit_code = 1
