"""Waiting for the ranks hpcinfer started, and the one exit code their answers make.

ssh exits 255 when it cannot reach a host (unknown name, refused connection, no key); the
remote hpcinfer never does. Alone, that 255 reaches the user as a bare exit code under
ssh's own one-line message, so the hosts are named here and the documented code for a run
that failed as a whole (1) is returned instead. Rank 0 coordinates: when its host cannot be
reached the other ranks would only wait for it, so they are stopped at once.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence

from hpcinfer.cluster.allocation import Allocation
from hpcinfer.core.processes import Child, spawn, stop_all
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import HardwareError, LaunchError
from hpcinfer.launch.rank_commands import launch_commands
from hpcinfer.spec import JobSpec

SSH_UNREACHABLE = 255
"""ssh's exit status for its own failures (connection, authentication, host name)."""

_POLL_S = 0.2
_STOP_GRACE_S = 30.0
"""How long launchers get to pass a stop on to their ranks before their groups are killed."""


def launch_self(
    spec: JobSpec,
    launcher: str,
    argv: Sequence[str],
    allocation: Allocation,
    stop: StopSignal | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> int:
    """Start the ranks of `hpcinfer <argv>` (run or serve) over `allocation` with `launcher`
    and wait for them (`run_rank_commands`): each rank runs this very command line."""
    rank_command = [sys.executable, "-m", "hpcinfer", *argv]
    commands = launch_commands(spec, launcher, rank_command, allocation, dict(os.environ))
    return run_rank_commands(commands, launcher, stop, on_failure)


def run_rank_commands(
    commands: Sequence[Sequence[str]],
    launcher: str,
    stop: StopSignal | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> int:
    """Start every launch command (mpiexec, srun, ssh) and wait for all of them: the one exit
    code of `wait_for_ranks`.

    Each launcher starts through `core.processes.spawn`: its own process group, the
    parent-death signal and a guard, so a killed hpcinfer takes its launchers (and, through
    them, the ranks) along. Being in their own group, they no longer get the terminal's
    Ctrl-C: a stop request (the CLI feeds it from SIGINT/SIGTERM) is passed to each launcher
    as SIGTERM, which mpiexec and srun pass to the ranks; the first drains, a second aborts."""
    children: list[Child] = []
    try:
        for command in commands:
            children.append(spawn(command, env=os.environ, log=None))
    except FileNotFoundError as exc:
        stop_all(children, _STOP_GRACE_S)
        raise HardwareError(f"cannot start the launcher: {exc}") from None
    try:
        return wait_for_ranks(children, commands, launcher, stop, on_failure)
    finally:  # normally all have exited; on an error, nothing is left running
        stop_all(children, _STOP_GRACE_S)


def wait_for_ranks(
    children: Sequence[Child],
    commands: Sequence[Sequence[str]],
    launcher: str,
    stop: StopSignal | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> int:
    """Wait for every launch command; rank 0's exit code, else the worst one. Under ssh a
    host that could not be reached is a LaunchError naming it. `on_failure` hears (once) of
    the first launch command that exits non-zero while others still run: mpiexec ends a job
    whose rank failed, separate ssh clients do not, so a caller whose ranks cannot go on
    without each other stops the rest there."""
    codes: list[int | None] = [None] * len(children)
    passed_on = 0  # stop requests sent to the launchers (1: drain, 2: abort)
    told = on_failure is None
    while any(code is None for code in codes):
        for i, child in enumerate(children):
            if codes[i] is None:
                codes[i] = child.returncode
                if not told and codes[i] and any(code is None for code in codes):
                    told = True
                    assert on_failure is not None
                    on_failure(f"rank {i} exited with code {codes[i]}")
        if launcher == "ssh" and codes[0] == SSH_UNREACHABLE:
            for child in children[1:]:
                if child.alive():
                    child.proc.terminate()
            codes = [child.proc.wait() for child in children]
        wanted = 0 if stop is None else 2 if stop.aborted else 1 if stop.requested else 0
        while passed_on < wanted:
            passed_on += 1
            for child in children:
                if child.alive():
                    child.proc.send_signal(signal.SIGTERM)
        if any(code is None for code in codes):
            time.sleep(_POLL_S)
    done = [int(code or 0) for code in codes]
    if launcher == "ssh":
        failed = [c for c, code in zip(commands, done, strict=True) if code == SSH_UNREACHABLE]
        if failed:
            hosts = [ssh_host(c) for c in failed]
            first = done[0] == SSH_UNREACHABLE
            raise LaunchError(unreachable_message(hosts, first=first, check=ssh_check(failed[0])))
    return done[0] if done[0] != 0 or all(c == 0 for c in done) else max(done)


def ssh_host(command: Sequence[str]) -> str:
    """The host of one launch command as `ssh_fanout` writes it, `SSH... -o BatchMode=yes
    HOST REMOTE`: the word before the remote command, whatever options $HPCINFER_SSH put
    in front (an option's value may look like a host name, so it is never searched for)."""
    return command[-2]


def ssh_check(command: Sequence[str]) -> str:
    """The command a user runs to test the login `command` needs: the same ssh and options,
    `true` on the same host."""
    return shlex.join([*command[:-1], "true"])


def unreachable_message(hosts: Sequence[str], *, first: bool, check: str | None = None) -> str:
    """What to tell the user when ssh could not reach `hosts` (`check`: the command that
    tests the first one's login, default plain ssh)."""
    named = ", ".join(hosts)
    what = "rank 0's host, so no rank ran" if first else "the ranks on the other hosts ran"
    return (
        f"--launcher ssh could not reach {named} (ssh exit {SSH_UNREACHABLE}, its message is "
        f"above; {what}): check the host names in the host file, and that "
        f"`{check or f'ssh -o BatchMode=yes {hosts[0]} true'}` works without a password"
    )
