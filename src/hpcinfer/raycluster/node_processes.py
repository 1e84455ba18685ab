"""The processes of one Ray node on this machine, found and stopped without `ray stop`.

`ray stop` kills every Ray process of the user on the machine: another job's cluster, or
the other "hosts" of a test that share one machine. A node's processes are instead the
ones in the session its `ray start` began (node start runs it with `setsid`, and Ray's
daemons stay in that session), and the Ray programs (Ray's own binaries and scripts, or
renamed workers `ray::...`) whose command line names the node's temp dir; some of Ray's
processes rename themselves (`ray::RuntimeEnvAgent`), hence the session. Another program
of the user that only names the folder (`tail -f .../ray-start.log`) is left alone. Stopping
is SIGTERM, a bounded wait, then SIGKILL: gcs_server and raylet at times ignore SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NODE_RECORD = "hpcinfer-node.json"
"""In the node's temp dir: the session its `ray start` runs in (and who started it)."""
TERM_GRACE_S = 6.0
KILL_WAIT_S = 5.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class NodeProcess:
    pid: int
    session: int
    start_ticks: int  # tells a pid from a later process with the same number
    command: str


def _read_process(entry: Path) -> NodeProcess | None:
    """One /proc entry of ours, alive (not a zombie); None if gone, foreign or a zombie."""
    try:
        if entry.stat().st_uid != os.getuid():
            return None
        stat = (entry / "stat").read_text()
        command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return NodeProcess(int(entry.name), int(fields[3]), int(fields[19]), command.strip())


def _all_processes() -> Iterable[NodeProcess]:
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            found = _read_process(entry)
            if found is not None:
                yield found


def names_dir(command: str, temp_dir: Path) -> bool:
    """Whether a command line names `temp_dir` itself or a path below it (not `<dir>0`)."""
    return re.search(re.escape(str(temp_dir)) + r"(?=/|\s|$|[\"',;])", command) is not None


def recorded_session(temp_dir: Path) -> int | None:
    """The session the node's `ray start` ran in, from its record (None if never written)."""
    try:
        data = json.loads((temp_dir / NODE_RECORD).read_text())
        return int(data["session"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_node_record(temp_dir: Path, session: int, host: str, cluster: str) -> None:
    temp_dir.mkdir(parents=True, exist_ok=True)
    record = {"session": session, "host": host, "cluster": cluster}
    (temp_dir / NODE_RECORD).write_text(json.dumps(record) + "\n")


def _ray_package_dirs() -> tuple[str, ...]:
    """Where Ray's binaries and scripts live (found without importing Ray)."""
    spec = importlib.util.find_spec("ray")
    found = list(spec.submodule_search_locations or []) if spec else []
    return tuple(dict.fromkeys(f"{d}/" for p in found for d in (p, os.path.realpath(p))))


RAY_PACKAGE_DIRS = _ray_package_dirs()


def is_ray_program(command: str) -> bool:
    """Whether a command line is one of Ray's: a renamed worker (`ray::...`), or its first
    words name a program of Ray's package (raylet, gcs_server, Ray's Python scripts)."""
    if command.startswith("ray::"):
        return True
    words = command.split()[:3]
    return any(word.startswith(d) for word in words for d in RAY_PACKAGE_DIRS)


def node_processes(temp_dir: Path, session: int | None = None) -> list[NodeProcess]:
    """The live processes of the node whose temp dir is `temp_dir` (this one excluded):
    its `ray start`'s session, and Ray's programs naming the folder."""
    session = recorded_session(temp_dir) if session is None else session
    mine = {os.getpid(), os.getppid()}
    return [
        p
        for p in _all_processes()
        if p.pid not in mine
        and (
            (session is not None and p.session == session)
            or (names_dir(p.command, temp_dir) and is_ray_program(p.command))
        )
    ]


def _still_there(process: NodeProcess) -> bool:
    found = _read_process(_PROC / str(process.pid))
    return found is not None and found.start_ticks == process.start_ticks


def _signal(processes: Iterable[NodeProcess], signum: int) -> None:
    for process in processes:
        if _still_there(process):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signum)


def _wait_gone(processes: list[NodeProcess], seconds: float) -> list[NodeProcess]:
    deadline = time.monotonic() + seconds
    left = [p for p in processes if _still_there(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _still_there(p)]
    return left


def stop_node_processes(
    temp_dir: Path, grace_s: float = TERM_GRACE_S, rounds: int = 3
) -> tuple[int, list[NodeProcess]]:
    """SIGTERM the node's processes, wait up to `grace_s`, SIGKILL what is left; repeated
    for processes started meanwhile. Returns (how many were stopped, those still alive)."""
    session = recorded_session(temp_dir)
    stopped: set[int] = set()
    left: list[NodeProcess] = []
    for _ in range(rounds):
        found = node_processes(temp_dir, session)
        if not found:
            return len(stopped), []
        stopped.update(p.pid for p in found)
        _signal(found, signal.SIGTERM)
        left = _wait_gone(found, grace_s)
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, KILL_WAIT_S)
    left = node_processes(temp_dir, session)
    return len(stopped), left
