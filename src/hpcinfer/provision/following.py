"""One child command whose output is followed line by line while it runs.

Ansible's run, a forwarded command's ssh: each is a `core.processes` child (own process
group, guard, parent-death signal), so it ends with us, also on kill -9; its output goes to a
log file, which is read as it grows and handed over line by line (progress on stderr). A
stop request (SIGINT/SIGTERM through `StopSignal`) stops its whole group and raises.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hpcinfer.core.processes import spawn
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import ProvisionError, StoppedError

POLL_S = 0.1
STOP_GRACE_S = 10.0

LineSink = Callable[[str], None]


def run_following(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    on_line: LineSink | None = None,
    stop: StopSignal | None = None,
    cwd: Path | None = None,
    stdin: int | None = None,
) -> int:
    """Run `argv` to its end, its output into `log` (fresh) and to `on_line`; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        child = spawn(
            argv,
            env=env,
            log=log,
            fresh_log=True,
            cwd=cwd,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
        )
    except OSError as exc:
        raise ProvisionError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    reader = _LineReader(log)
    try:
        while child.alive():
            if stop is not None and stop.requested:
                child.stop(STOP_GRACE_S)
                raise StoppedError(f"{Path(argv[0]).name} stopped: {stop.reason}")
            reader.feed(on_line)
            time.sleep(POLL_S)
    finally:
        child.stop(STOP_GRACE_S)  # reaps what it left in its group; a no-op when it ended
    reader.feed(on_line, final=True)
    code = child.returncode
    return -1 if code is None else code


class _LineReader:
    """Reads the complete lines a log gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def feed(self, sink: LineSink | None, final: bool = False) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return
        self.offset += len(chunk)
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        if sink is not None:
            for line in lines:
                sink(line.decode("utf-8", errors="replace").rstrip("\r"))
