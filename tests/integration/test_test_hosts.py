"""The three test hosts (network namespaces with an sshd each) that multi-node tests use:
they reach each other by name over their own link and nothing else does; each has a private
folder at one path and its own /etc/hosts, as separate machines do; `hpcinfer run --launcher
ssh` spans them with real ssh; nothing of theirs outlives `close()`, and a killed run's
leftovers go at the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcinfer.testing.netns_hosts import ETC_NETNS, NetnsHosts, make_hosts
from tests.conftest import hpcinfer_cmd, read_rows, write_prompts
from tests.harness import wait_for

pytestmark = pytest.mark.integration

CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], 22), timeout=10).close()"


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that mention `text` (e.g. a run's directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_hosts_reach_each_other_by_name_over_their_link_only(test_hosts: NetnsHosts) -> None:
    hosts = test_hosts
    assert hosts.hostfile.read_text().split() == ["h1", "h2", "h3"]
    for name in hosts.names:
        done = hosts.ssh_from_first(name, ["printenv", "SSH_CONNECTION"])
        assert done.returncode == 0, done.stderr
        client, _, server, port = done.stdout.split()
        assert (client, server, port) == (hosts.address("h1"), hosts.address(name), "22")
        reach = hosts.run("h1", [sys.executable, "-c", CONNECT, hosts.address(name)], timeout=60)
        assert reach.returncode == 0, reach.stderr
        routes = _ip("-n", hosts.namespace(name), "route", "show")
        assert "default" not in routes, "traffic from a host goes only to the others"
        addresses = _ip("-n", hosts.namespace(name), "-brief", "addr", "show", hosts.interface)
        assert f"{hosts.address(name)}/24" in addresses
    subnet = hosts.address("h1").rsplit(".", 1)[0] + "."
    assert subnet not in _ip("addr", "show") and subnet not in _ip("route", "show")
    assert hosts.interface not in _ip("link", "show"), "the link exists only in the namespaces"


def test_set_env_reaches_new_sessions_on_that_host_only(test_hosts: NetnsHosts) -> None:
    hosts = test_hosts

    def seen(name: str) -> str:
        return hosts.ssh_from_first(name, ["printenv", "HPCINFER_TEST_MARK"]).stdout.strip()

    try:
        hosts.set_env("h2", {"HPCINFER_TEST_MARK": "a b"})
        assert (seen("h2"), seen("h3")) == ("a b", "")
    finally:
        hosts.set_env("h2", {})
    assert seen("h2") == ""


def test_each_host_has_its_own_node_dir_at_one_path(test_hosts: NetnsHosts) -> None:
    """A file written in node_dir on h2 (over ssh, as a role would) is h2's alone: h3 and
    this machine see nothing at that path; processes `run` starts inside h2 see it too."""
    hosts = test_hosts
    mark = hosts.node_dir / "mark"
    try:
        write = hosts.ssh_from_first("h2", ["sh", "-c", f"echo h2-was-here > {mark}"])
        assert write.returncode == 0, write.stderr
        assert hosts.ssh_from_first("h2", ["cat", str(mark)]).stdout == "h2-was-here\n"
        assert hosts.run("h2", ["cat", str(mark)]).stdout == "h2-was-here\n"
        on_h3 = hosts.ssh_from_first("h3", ["cat", str(mark)])
        assert on_h3.returncode != 0 and "No such file" in on_h3.stderr
        assert hosts.run("h1", ["ls", "-A", str(hosts.node_dir)]).stdout == ""
        assert (hosts.node_dir_of("h2") / "mark").read_text() == "h2-was-here\n"
        assert not (hosts.node_dir_of("h3") / "mark").exists()
        assert not mark.exists(), "this machine sees the shared path's own empty folder"
    finally:
        (hosts.node_dir_of("h2") / "mark").unlink(missing_ok=True)


def test_each_host_has_its_own_etc_hosts(test_hosts: NetnsHosts) -> None:
    """h2's /etc/hosts edited in place (as the hosts role does): h3 and this machine keep
    theirs."""
    hosts = test_hosts
    mine = Path("/etc/hosts").read_text()
    line = "10.213.0.99 hpci-test-mark"
    before = {n: hosts.ssh_from_first(n, ["cat", "/etc/hosts"]).stdout for n in ("h2", "h3")}
    copy = ETC_NETNS / hosts.namespace("h2") / "hosts"
    assert copy.read_text() == before["h2"]
    try:
        edit = hosts.ssh_from_first("h2", ["sh", "-c", f"echo '{line}' >> /etc/hosts"])
        assert edit.returncode == 0, edit.stderr
        assert line in hosts.ssh_from_first("h2", ["cat", "/etc/hosts"]).stdout
        assert line in copy.read_text()
        assert hosts.ssh_from_first("h3", ["cat", "/etc/hosts"]).stdout == before["h3"]
        assert Path("/etc/hosts").read_text() == mine
    finally:
        copy.write_text(before["h2"])


def test_run_over_ssh_spans_the_three_hosts(
    test_hosts: NetnsHosts, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`hpcinfer run --launcher ssh` started inside h1, as on an allocation's first node:
    one rank per host over real ssh, ranks 1 and 2 joining rank 0 across the link. The
    static schedule gives file `i.in` to rank i, so each rank must have done its share."""
    hosts = test_hosts
    (tmp_path / "in").mkdir()
    for rank in range(3):
        write_prompts(tmp_path / "in" / f"{rank}.in", 3 + rank)
    accepted = {name: hosts.sshd_log(name).count("Accepted publickey") for name in hosts.names}
    args = ["run", "in", "-o", "out", "--launcher", "ssh", "--hostfile", str(hosts.hostfile)]
    args += ["--workers", "1", "--schedule", "static", "--max-tokens", "8", "--json"]
    env = hosts.env(cli_env)
    done = hosts.run("h1", hpcinfer_cmd(*args), env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank_of = {w["worker"]: w["rank"] for w in json.loads(done.stdout)["workers"]}
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(
        f"in/{rank}.in:{i}" for rank in range(3) for i in range(1, 4 + rank)
    )
    assert all(r["status"] == "ok" for r in rows)
    for rank in range(3):
        mine = {rank_of[r["worker"]] for r in rows if r["id"].startswith(f"in/{rank}.in:")}
        assert mine == {rank}, f"in/{rank}.in must run on rank {rank}"
    for name in hosts.names:  # each rank came in through its own host's sshd
        assert hosts.sshd_log(name).count("Accepted publickey") > accepted[name]


def test_close_leaves_nothing_and_a_killed_runs_hosts_go_at_the_next_start(
    tmp_path: Path,
) -> None:
    # a run killed before it could close: its namespaces, sshd and files are left behind
    script = (
        "import sys, time; from hpcinfer.testing.netns_hosts import make_hosts; "
        "h = make_hosts(2); print(h.directory, flush=True); time.sleep(600)"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert killed.stdout is not None
    left = killed.stdout.readline().strip()
    assert left, "the killed run made its hosts"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    prefix = f"hpci-{killed.pid}-"
    assert prefix in _ip("netns", "list") and _processes_naming(left)
    assert list(ETC_NETNS.glob(f"{prefix}*")), "its hosts' /etc/hosts are left too"

    hosts = make_hosts(2)
    try:
        assert prefix not in _ip("netns", "list")
        assert not list(ETC_NETNS.glob(f"{prefix}*"))
        assert not Path(left).exists()
        fresh = (ETC_NETNS / hosts.namespace("h1") / "hosts").read_text()
        assert fresh == Path("/etc/hosts").read_text(), "a host starts with this machine's"
        wait_for(lambda: not _processes_naming(left), 30, "the killed run's sshd to end")
        sleeper = hosts.popen("h2", ["sleep", "600"])
        over_ssh = hosts.ssh_from_first("h2", ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        assert over_ssh.returncode == 0, over_ssh.stderr
        started = hosts.pids("h2")
        assert len(started) >= 3  # sshd, and the two sleeps
        run_prefix = f"hpci-{hosts.run_id}-"
        assert run_prefix in _ip("netns", "list")
    finally:
        hosts.close()
    assert run_prefix not in _ip("netns", "list")
    assert not list(ETC_NETNS.glob(f"{run_prefix}*")), "no /etc/netns folder of the run is left"
    assert sleeper.poll() is not None
    assert not hosts.directory.exists()
    assert not _processes_naming(str(hosts.directory)), "no sshd of the run is left"
    assert not [pid for pid in started if _running(pid)], "every process in a host ended"


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie has ended, only its parent has not read it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
