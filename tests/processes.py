"""Finding processes a test started, including vLLM's renamed children (`VLLM::EngineCore`
does not show its command line): tests mark their processes with HPCINFER_TEST_MARK in the
environment, which every child inherits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import wait_for


def _live(keep: Callable[[Path, list[str]], bool]) -> list[int]:
    """Pids of live (not zombie) processes other than this one for which `keep(/proc/PID,
    the fields of its stat after the name)` holds."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and keep(proc, fields):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def marked(mark: str) -> list[int]:
    """Pids of live processes whose environment holds the test's mark (not zombies)."""
    needle = f"HPCINFER_TEST_MARK={mark}".encode()
    return _live(lambda proc, _: needle in (proc / "environ").read_bytes())


@contextmanager
def marked_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` plus a fresh HPCINFER_TEST_MARK; on leaving, every process carrying the mark is
    killed with its process group (on failure too)."""
    mark = uuid.uuid4().hex
    try:
        yield dict(env, HPCINFER_TEST_MARK=mark)
    finally:
        for pid in marked(mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def processes_in(directory: Path) -> list[int]:
    """Live (not zombie) processes whose working directory is `directory`: everything a
    command started there started, and what those started, however renamed. vLLM's
    EngineCore overwrites its environment with its title (`marked` can miss it); the working
    directory it inherits stays."""
    target = str(directory.resolve())
    return _live(lambda proc, _: os.readlink(proc / "cwd") == target)


def titled(pids: list[int], prefix: str) -> list[int]:
    """Those of `pids` whose command line (a title vLLM sets, `VLLM::Worker_TP0`) starts
    with `prefix`."""
    hits = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix.encode()):
                hits.append(pid)
    return hits


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    return _live(lambda _, fields: int(fields[2]) == pgid)


def with_text(pids: list[int], text: str) -> list[int]:
    """Pids (among all) whose command line contains `text` (a port, a model path)."""
    hits = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                hits.append(int(proc.name))
        except OSError:
            continue
    return [p for p in hits if p in pids or not pids]


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of `pid`."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        found = {int(c) for c in path.read_text().split()}
        return [c for c in _live(lambda _, fields: int(fields[1]) == pid) if c in found]
    return []


def workers_of(pid: int) -> list[int]:
    """The run workers among `pid`'s children (each child also has a guard process, which
    ends the child's group should hpcinfer be killed)."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"hpcinfer.run.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def command_lines(pids: list[int]) -> list[str]:
    """The command lines of those of `pids` still there, for a failure message."""
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace").strip())
    return lines


def assert_no_orphans(mark: str, *texts: str, timeout: float = 30.0) -> None:
    """Every process carrying `mark` ends within `timeout`, and none names any of `texts`."""
    wait_for(
        lambda: not marked(mark),
        timeout,
        "every process the test started to end",
        state=lambda: command_lines(marked(mark)),
        interval=0.3,
    )
    for text in texts:
        assert with_text([], text) == [], f"a process still names {text}"


@contextmanager
def stub_process(*args: str, cores: set[int] | None = None) -> Iterator[str]:
    """`python -m hpcinfer.testing.stub_server --port 0 ARGS` in its own process (client and
    server must not share a GIL), as a user starts it, optionally pinned to `cores`; its URL.
    Stopped with SIGTERM, then killed, at the end."""
    cmd = [sys.executable, "-m", "hpcinfer.testing.stub_server", "--port", "0", *args]
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=pin,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.kill()
            pytest.fail(f"the stub server did not start: {proc.communicate(timeout=10)[1]}")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
