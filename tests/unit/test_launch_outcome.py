"""Ranks started over ssh: a host ssh cannot reach is named, with the documented exit code
of a failed run (1), not ssh's bare 255; when it is rank 0's host, the others are stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpcinfer.core.processes import Child, spawn
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import LaunchError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.launch.outcome import SSH_UNREACHABLE, run_rank_commands, wait_for_ranks
from tests.harness import InProcessCLI, wait_for
from tests.processes import group_members

# ssh -o BatchMode=yes HOST COMMAND, as ssh_fanout writes it: "down" cannot be reached,
# "slow" runs until stopped, "fail" exits 3, any other host succeeds.
FAKE_SSH = """#!/bin/sh
case "$3" in
  down) echo "ssh: Could not resolve hostname down: Name or service not known" >&2; exit 255;;
  slow) exec sleep 600;;
  fail) exit 3;;
  *) exit 0;;
esac
"""


@pytest.fixture
def fake_ssh(tmp_path: Path) -> Path:
    path = tmp_path / "fake-ssh"
    path.write_text(FAKE_SSH)
    path.chmod(0o755)
    return path


def start(fake_ssh: Path, hosts: list[str]) -> tuple[list[Child], list[list[str]]]:
    commands = [[str(fake_ssh), "-o", "BatchMode=yes", host, "true"] for host in hosts]
    return [spawn(c, env=os.environ, log=None) for c in commands], commands


def test_all_ranks_ok_is_rank_0s_code(fake_ssh: Path) -> None:
    procs, commands = start(fake_ssh, ["a", "b"])
    assert wait_for_ranks(procs, commands, "ssh") == 0


def test_an_unreachable_host_is_named_with_exit_code_1(fake_ssh: Path) -> None:
    procs, commands = start(fake_ssh, ["a", "down"])
    with pytest.raises(LaunchError) as caught:
        wait_for_ranks(procs, commands, "ssh")
    message = str(caught.value)
    assert "could not reach down" in message and "the ranks on the other hosts ran" in message
    assert "ssh -o BatchMode=yes down true" in message
    assert caught.value.exit_code == ExitCode.FAILED


def test_rank_0_unreachable_stops_the_ranks_waiting_for_it(fake_ssh: Path) -> None:
    procs, commands = start(fake_ssh, ["down", "slow"])
    with pytest.raises(LaunchError, match=r"could not reach down .*no rank ran"):
        wait_for_ranks(procs, commands, "ssh")
    assert not procs[1].alive(), "the rank on 'slow' must be stopped, not left waiting"


def test_other_launchers_keep_their_codes(fake_ssh: Path) -> None:
    procs, commands = start(fake_ssh, ["down"])
    assert wait_for_ranks(procs, commands, "mpi") == SSH_UNREACHABLE


def test_run_over_ssh_to_an_unreachable_host_names_it_and_exits_1(
    tmp_path: Path,
    fake_ssh: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    (tmp_path / "hosts").write_text("down\n")
    cli = InProcessCLI(monkeypatch, capsys, tmp_path)
    ran = cli(
        "run",
        "p.txt",
        "--launcher",
        "ssh",
        "--hostfile",
        "hosts",
        env={"HPCINFER_SSH": str(fake_ssh)},
    )
    assert ran.code == ExitCode.FAILED, ran.output
    assert "could not reach down" in ran.err


def test_an_unreachable_host_is_named_whatever_options_hpcinfer_ssh_has(
    tmp_path: Path,
    fake_ssh: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`HPCINFER_SSH="ssh -F CONFIG"`: the options reach ssh, the host is still found (an
    option's value is no host), and the command to check the login is the one that failed."""
    with_options = tmp_path / "ssh-with-options"
    seen = tmp_path / "argv"
    with_options.write_text(f'#!/bin/sh\necho "$@" >> {seen}\nshift 2\nexec {fake_ssh} "$@"\n')
    with_options.chmod(0o755)
    (tmp_path / "p.txt").write_text("hello\n")
    (tmp_path / "hosts").write_text("down\n")
    config = tmp_path / "my config"
    ssh = f"{with_options} -F '{config}'"
    ran = InProcessCLI(monkeypatch, capsys, tmp_path)(
        "run", "p.txt", "--launcher", "ssh", "--hostfile", "hosts", env={"HPCINFER_SSH": ssh}
    )
    assert ran.code == ExitCode.FAILED, ran.output
    assert seen.read_text().startswith(f"-F {config} -o BatchMode=yes down ")
    assert "could not reach down " in ran.err
    assert f"`{with_options} -F '{config}' -o BatchMode=yes down true`" in ran.err


# A launcher that passes SIGTERM on as mpiexec does: the first asks its rank to finish
# (the rank writes "drain"), a second aborts it ("abort").
FAKE_LAUNCHER = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def on_term(signum, frame):
    out.write_text(out.read_text() + ("abort" if out.read_text() else "drain"))
    if "abort" in out.read_text():
        sys.exit(4)
out.write_text("")
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(0.05)
"""


def test_a_stop_request_reaches_the_launchers_first_drain_then_abort(tmp_path: Path) -> None:
    """The launchers run in their own process group (so a killed hpcinfer takes them along);
    Ctrl-C no longer reaches them from the terminal, so the stop request is passed on."""
    seen = [tmp_path / "a", tmp_path / "b"]
    commands = [[sys.executable, "-c", FAKE_LAUNCHER, str(path)] for path in seen]
    stop = StopSignal()
    result: list[int] = []
    waiter = threading.Thread(
        target=lambda: result.append(run_rank_commands(commands, "mpi", stop))
    )
    waiter.start()
    wait_for(lambda: all(p.exists() for p in seen), 30, "both launchers started")
    stop.request("signal SIGINT")
    wait_for(lambda: all(p.read_text() == "drain" for p in seen), 30, "both told to drain")
    stop.request("signal SIGINT")
    waiter.join(60)
    assert result == [4]
    assert [p.read_text() for p in seen] == ["drainabort", "drainabort"]


def test_launchers_die_with_a_killed_hpcinfer(tmp_path: Path) -> None:
    parent = """
import sys
from hpcinfer.launch.outcome import run_rank_commands
print(flush=True)
run_rank_commands([["sh", "-c", "sleep 600 & echo $$; wait"]], "mpi")
"""
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    launcher = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    wait_for(
        lambda: group_members(launcher) == [],
        30,
        "the launcher and what it started to end with hpcinfer",
        state=lambda: group_members(launcher),
    )


def test_a_failed_rank_is_reported_so_a_serve_launch_can_stop_the_others(fake_ssh: Path) -> None:
    """Separate ssh clients do not end each other: the caller hears of the first failed
    rank while the others run (serve stops a spanning server's other ranks there)."""
    procs, commands = start(fake_ssh, ["fail", "slow"])
    heard: list[str] = []

    def on_failure(why: str) -> None:
        heard.append(why)
        procs[1].proc.terminate()

    assert wait_for_ranks(procs, commands, "ssh", on_failure=on_failure) == 3
    assert heard == ["rank 0 exited with code 3"]
