"""Ranks started over ssh: a host ssh cannot reach is named, with the documented exit code
of a failed run (1), not ssh's bare 255; when it is rank 0's host, the others are stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcinfer.errors import LaunchError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.launch.outcome import SSH_UNREACHABLE, wait_for_ranks
from tests.harness import InProcessCLI

# ssh -o BatchMode=yes HOST COMMAND, as ssh_fanout writes it: "down" cannot be reached,
# "slow" runs until stopped, any other host succeeds.
FAKE_SSH = """#!/bin/sh
case "$3" in
  down) echo "ssh: Could not resolve hostname down: Name or service not known" >&2; exit 255;;
  slow) exec sleep 600;;
  *) exit 0;;
esac
"""


@pytest.fixture
def fake_ssh(tmp_path: Path) -> Path:
    path = tmp_path / "fake-ssh"
    path.write_text(FAKE_SSH)
    path.chmod(0o755)
    return path


def start(
    fake_ssh: Path, hosts: list[str]
) -> tuple[list[subprocess.Popen[bytes]], list[list[str]]]:
    commands = [[str(fake_ssh), "-o", "BatchMode=yes", host, "true"] for host in hosts]
    return [subprocess.Popen(c) for c in commands], commands


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
    assert procs[1].poll() is not None, "the rank on 'slow' must be stopped, not left waiting"


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
