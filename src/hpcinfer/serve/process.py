"""One server process: started in its own session, tied to hpcinfer's life, stopped by group.

A server runs in its own session (so a Ctrl-C meant for hpcinfer does not hit it halfway,
and one `killpg` reaches the server and the EngineCore/worker processes vLLM forks) and
gets SIGTERM from the kernel when the hpcinfer thread that started it dies
(PR_SET_PDEATHSIG), so no server outlives a killed hpcinfer. The death signal follows the
*thread* that forked the server: start servers from a thread that lives as long as they do
(the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from hpcinfer.logtail import LOG_TAIL_LINES, log_tail

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None  # not Linux: servers are still stopped by hpcinfer, just not on a crash


_PRCTL = _load_prctl()


def _child_setup(parent: int, cores: frozenset[int] | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: only system calls, nothing that allocates
    much or takes locks (the parent may have threads)."""

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: follow it now
                os._exit(1)
        if cores:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(0, cores)

    return setup


class ServerProcess:
    """A started server: its pid (also its process group id), its log, and how to stop it."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        log: Path,
        cores: Iterable[int] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as handle:  # a fresh log per start: its tail is this start's
            self._proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid(), frozenset(cores) if cores else None),
            )
        self.pid = self._proc.pid
        self._group_gone = False

    @property
    def returncode(self) -> int | None:
        """None while the server runs; its exit code (negative: killed by that signal)."""
        return self._proc.poll()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def signal_group(self, signum: int) -> None:
        """Signal the server and everything it started (they share its process group)."""
        if self._group_gone:
            return  # its id may belong to another process group by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> bool:
        """True when the server exited within `timeout` seconds."""
        try:
            self._proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True

    def reap_group(self) -> None:
        """After the server exited: kill whatever it left in its group (an EngineCore that
        outlived its API server), then collect the exit status."""
        self.signal_group(signal.SIGKILL)
        if self.wait(5.0):
            self._group_gone = True

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log, lines)

    def exit_text(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def stop_all(servers: Sequence[ServerProcess], grace_s: float) -> None:
    """SIGTERM every server's group at once, wait up to `grace_s` for all of them, SIGKILL
    the groups still there; afterwards no process of any group is left."""
    for server in servers:
        if server.alive():
            server.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for server in servers:
        if not server.wait(deadline - time.monotonic()):
            server.signal_group(signal.SIGKILL)
    for server in servers:
        server.reap_group()
