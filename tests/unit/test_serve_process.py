"""Server processes: own process group, stopped SIGTERM-then-SIGKILL, gone when hpcinfer dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcinfer.logtail import log_tail
from hpcinfer.serve.process import ServerProcess, stop_all
from tests.harness import wait_for
from tests.processes import group_members

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    # The shell and its child both ignore SIGTERM (an ignored signal survives exec).
    script = "trap '' TERM; sleep 60 & echo up; wait"
    server = ServerProcess(["sh", "-c", script], ENV, tmp_path / "s.log")
    try:
        wait_for(lambda: "up" in (tmp_path / "s.log").read_text(), 10, "the server's 'up' line")
        assert len(group_members(server.pid)) == 2  # the shell and its sleep
        started = time.monotonic()
        stop_all([server], grace_s=1.0)
        took = time.monotonic() - started
        assert 0.9 <= took < 5, took
        assert server.returncode == -signal.SIGKILL
        assert server.exit_text() == "killed by SIGKILL"
        assert group_members(server.pid) == []  # the child went with it
    finally:
        server.signal_group(signal.SIGKILL)


def test_a_server_that_honours_sigterm_stops_at_once(tmp_path: Path) -> None:
    server = ServerProcess(["sleep", "60"], ENV, tmp_path / "s.log")
    started = time.monotonic()
    stop_all([server], grace_s=30.0)
    assert time.monotonic() - started < 5
    assert server.returncode == -signal.SIGTERM
    assert not server.alive()


def test_servers_run_in_their_own_session(tmp_path: Path) -> None:
    server = ServerProcess(["sleep", "60"], ENV, tmp_path / "s.log")
    try:
        assert os.getsid(server.pid) == server.pid != os.getsid(0)
        assert os.getpgid(server.pid) == server.pid
    finally:
        stop_all([server], grace_s=5)


def test_affinity_is_applied_in_the_child(tmp_path: Path) -> None:
    core = min(os.sched_getaffinity(0))
    server = ServerProcess(["sleep", "60"], ENV, tmp_path / "s.log", cores=[core])
    try:
        assert os.sched_getaffinity(server.pid) == {core}
    finally:
        stop_all([server], grace_s=5)


PARENT = """
import sys, time
from pathlib import Path
from hpcinfer.serve.process import ServerProcess
server = ServerProcess(["sleep", "60"], {"PATH": "/usr/bin:/bin"}, Path(sys.argv[1]))
print(server.pid, flush=True)
time.sleep(60)
"""


def test_servers_die_with_a_killed_hpcinfer(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "s.log")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert group_members(child) == [child]
        parent.kill()
        parent.wait()
        wait_for(
            lambda: group_members(child) == [],
            5,
            "the process group to be empty",
            state=lambda: group_members(child),
        )
    finally:
        parent.kill()
        parent.wait()
        if group_members(child):
            os.killpg(child, signal.SIGKILL)


def test_log_tail_is_the_end_of_the_log_indented(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = log_tail(log, 3)
    assert tail == "  line 97\n  line 98\n  line 99"
    assert log_tail(tmp_path / "missing.log") == ""
