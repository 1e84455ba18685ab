"""Child processes (servers, workers, benchmark engines): own process group, stopped
SIGTERM-then-SIGKILL, bound to their cores and environment, gone when hpcinfer dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcinfer.core.processes import bound_env, spawn, stop_all, without_rank_vars
from hpcinfer.logtail import log_tail
from hpcinfer.serve.process import ServerProcess
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
        assert 0.9 <= took < 30, took  # the grace period, then SIGKILL: not the 60 s sleep
        assert server.returncode == -signal.SIGKILL
        assert server.exit_text() == "killed by SIGKILL"
        assert group_members(server.pid) == []  # its child went with it, before stop_all returned
    finally:
        server.signal_group(signal.SIGKILL)


def test_a_server_that_honours_sigterm_stops_at_once(tmp_path: Path) -> None:
    server = ServerProcess(["sleep", "60"], ENV, tmp_path / "s.log")
    started = time.monotonic()
    stop_all([server], grace_s=120.0)
    assert time.monotonic() - started < 60  # at SIGTERM, long before the grace period ends
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
import signal, sys, time
from pathlib import Path
from hpcinfer.core.processes import spawn
argv = ["sh", "-c", sys.argv[2]]
child = spawn(argv, env={"PATH": "/usr/bin:/bin"}, log=Path(sys.argv[1]),
              death_signal=getattr(signal, sys.argv[3]))
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("script", "death_signal"),
    [
        ("exec sleep 60", "SIGTERM"),  # a server
        ("trap '' TERM INT; sleep 60 & wait", "SIGKILL"),  # a worker: it ignores SIGTERM
    ],
)
def test_children_die_with_a_killed_hpcinfer(
    tmp_path: Path, script: str, death_signal: str
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "s.log"), script, death_signal],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert child in group_members(child)
        parent.kill()
        parent.wait()
        # the child AND what it started (the `sleep`, as vLLM's EngineCore) end with it
        wait_for(
            lambda: group_members(child) == [],
            15,
            "the child's whole group to die with its parent",
            state=lambda: group_members(child),
        )
    finally:
        parent.kill()
        parent.wait()
        if group_members(child):
            os.killpg(child, signal.SIGKILL)


def test_a_worker_that_exits_leaves_nothing_in_its_group(tmp_path: Path) -> None:
    """`stop_all(..., first_signal=None)`: wait for the child to finish by itself, then kill
    what it left behind (as vLLM's EngineCore can outlive its parent)."""
    child = spawn(["sh", "-c", "sleep 60 & echo up"], env=ENV, log=tmp_path / "w.log")
    wait_for(lambda: not child.alive(), 10, "the worker to exit")
    assert child.returncode == 0 and len(group_members(child.pid)) == 1  # the orphaned sleep
    stop_all([child], grace_s=5.0, first_signal=None)
    assert group_members(child.pid) == []  # gone when stop_all returns, not a moment later


def test_the_log_is_appended_to_unless_fresh(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    for _ in range(2):
        spawn(["echo", "worker"], env=ENV, log=log).wait(10)
    assert log.read_text() == "worker\nworker\n"
    server = ServerProcess(["echo", "server"], ENV, log)
    server.wait(10)
    assert log.read_text() == "server\n"  # a server's log holds its last start only


def test_bound_env_drops_rank_variables_and_applies_the_binding() -> None:
    base = {
        "PMI_RANK": "3",
        "OMPI_COMM_WORLD_RANK": "3",
        "SLURM_PROCID": "3",
        "HPCINFER_RANK": "3",
        "ZE_AFFINITY_MASK": "0-11",
        "HF_HOME": "/h",
    }
    env = bound_env(base, {"ZE_AFFINITY_MASK": None, "CUDA_VISIBLE_DEVICES": "1"}, {"E": "x"})
    assert env == {"HF_HOME": "/h", "CUDA_VISIBLE_DEVICES": "1", "HF_HUB_OFFLINE": "1", "E": "x"}
    assert bound_env({"HF_HUB_OFFLINE": "0"}, {})["HF_HUB_OFFLINE"] == "0"
    assert without_rank_vars(base) == {"ZE_AFFINITY_MASK": "0-11", "HF_HOME": "/h"}


def test_log_tail_is_the_end_of_the_log_indented(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = log_tail(log, 3)
    assert tail == "  line 97\n  line 98\n  line 99"
    assert log_tail(tmp_path / "missing.log") == ""
