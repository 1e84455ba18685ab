"""Waiting for the ranks hpcinfer started, and the one exit code their answers make.

ssh exits 255 when it cannot reach a host (unknown name, refused connection, no key); the
remote hpcinfer never does. Alone, that 255 reaches the user as a bare exit code under
ssh's own one-line message, so the hosts are named here and the documented code for a run
that failed as a whole (1) is returned instead. Rank 0 coordinates: when its host cannot be
reached the other ranks would only wait for it, so they are stopped at once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from hpcinfer.errors import LaunchError

SSH_UNREACHABLE = 255
"""ssh's exit status for its own failures (connection, authentication, host name)."""

_POLL_S = 0.2


def wait_for_ranks(
    procs: Sequence[subprocess.Popen[bytes]], commands: Sequence[Sequence[str]], launcher: str
) -> int:
    """Wait for every launch command; rank 0's exit code, else the worst one. Under ssh a
    host that could not be reached is a LaunchError naming it."""
    codes: list[int | None] = [None] * len(procs)
    while any(code is None for code in codes):
        for i, proc in enumerate(procs):
            if codes[i] is None:
                codes[i] = proc.poll()
        if launcher == "ssh" and codes[0] == SSH_UNREACHABLE:
            for proc in procs[1:]:
                if proc.poll() is None:
                    proc.terminate()
            codes = [proc.wait() for proc in procs]
        if any(code is None for code in codes):
            time.sleep(_POLL_S)
    done = [int(code or 0) for code in codes]
    if launcher == "ssh":
        unreachable = [
            ssh_host(c) for c, code in zip(commands, done, strict=True) if code == SSH_UNREACHABLE
        ]
        if unreachable:
            raise LaunchError(unreachable_message(unreachable, first=done[0] == SSH_UNREACHABLE))
    return done[0] if done[0] != 0 or all(c == 0 for c in done) else max(done)


def ssh_host(command: Sequence[str]) -> str:
    """The host of one `ssh -o BatchMode=yes HOST REMOTE` launch command."""
    return command[-2]


def unreachable_message(hosts: Sequence[str], *, first: bool) -> str:
    """What to tell the user when ssh could not reach `hosts`."""
    named = ", ".join(hosts)
    what = "rank 0's host, so no rank ran" if first else "the ranks on the other hosts ran"
    return (
        f"--launcher ssh could not reach {named} (ssh exit {SSH_UNREACHABLE}, its message is "
        f"above; {what}): check the host names in the host file, and that "
        f"`ssh -o BatchMode=yes {hosts[0]} true` works without a password"
    )
