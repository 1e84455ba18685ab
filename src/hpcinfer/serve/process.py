"""One server process: a `hpcinfer.core.processes.Child` with its command line and its log.

A server runs in its own session (so a Ctrl-C meant for hpcinfer does not hit it halfway,
and one `killpg` reaches the server and the EngineCore/worker processes vLLM forks) and
gets SIGTERM from the kernel when the hpcinfer thread that started it dies
(PR_SET_PDEATHSIG), so no server outlives a killed hpcinfer. Start servers from a thread that
lives as long as they do (the main thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from hpcinfer.core.processes import Child, stop_all
from hpcinfer.logtail import LOG_TAIL_LINES, log_tail

__all__ = ["ServerProcess", "stop_all"]


class ServerProcess(Child):
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
        # a fresh log per start: its tail is this start's
        super().__init__(argv, env=env, log=log, fresh_log=True, cores=cores, cwd=cwd)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log, lines)
