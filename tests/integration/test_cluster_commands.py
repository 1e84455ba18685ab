"""hpcinfer cluster compute/control/sync/status over real ssh on the test hosts.

h1 is the control node, h2 and h3 the compute nodes. The commands are started inside h2, as
on a laptop that is not the control node: each forwards itself to h1 over ssh (the cluster
file copied there, hpcinfer's wheel installed into the cluster's venv from an offline
wheelhouse), and h1 reaches the compute nodes with its own $HPCINFER_SSH. Each host's sshd
sets HPCINFER_COORDINATOR_HOST to its address, which tells the hosts apart (they share the
host name and the file systems with this machine).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hpcinfer.testing.netns_hosts import NetnsHosts

TIMEOUT_S = 300


class Site:
    """The cluster file and folders of this module's cluster on the test hosts."""

    def __init__(self, hosts: NetnsHosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        self.name = f"itest-{os.getpid()}"
        self.venv = root / "cluster-venv"
        self.workdir = root / "workdir"
        self.file = root / "cluster.yaml"

    def write(self) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        # the venv borrows this one's packages (no downloads); hpcinfer itself is installed
        # into it by the first forwarded command
        (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        wheelhouse = self.root / "wheelhouse"
        wheelhouse.mkdir()
        address = self.hosts.address
        data = {
            "name": self.name,
            "version": "0.1",
            "remote_user": "root",
            "python": {"venv": str(self.venv), "version": "3.11", "wheelhouse": str(wheelhouse)},
            "ray": {"version": "2.49.0"},
            "control": {"name": "h1", "address": address("h1"), "workdir": str(self.workdir)},
            "compute": [
                {"name": n, "address": address(n), "mac": f"02:00:00:00:00:0{i}"}
                for i, n in enumerate(("h2", "h3"), start=2)
            ],
        }
        self.file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def state(self) -> Path:
        return Path.home() / ".hpcinfer" / "clusters" / self.name

    def run(
        self, *args: str, where: str = "h2", cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`hpcinfer cluster ARGS --cluster FILE` started inside host `where`."""
        env = self.hosts.env()  # this hpcinfer (PYTHONPATH as here), the hosts' ssh
        argv = [sys.executable, "-m", "hpcinfer", "cluster", *args]
        return self.hosts.run(
            where,
            [*argv[:5], "--cluster", str(self.file), *argv[5:]],
            env=env,
            cwd=cwd or self.root,
            timeout=TIMEOUT_S,
        )


@pytest.fixture(scope="module")
def site(
    test_hosts: NetnsHosts, rsync: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    made = Site(test_hosts, tmp_path_factory.mktemp("cluster"))
    made.write()
    # the control node reaches the compute nodes with the test hosts' ssh config
    test_hosts.set_env("h1", {"HPCINFER_SSH": shlex.join(test_hosts.ssh)})
    try:
        yield made
    finally:
        test_hosts.set_env("h1", {})
        shutil.rmtree(made.state(), ignore_errors=True)


def test_compute_prints_each_hosts_answer_from_the_control_node(site: Site) -> None:
    """Started on h2 (not the control node), the command forwards itself to h1, which
    installs this hpcinfer into its venv first, then asks h2 and h3."""
    ran = site.run("compute", "echo at $HPCINFER_COORDINATOR_HOST; hostname")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    address = site.hosts.address
    hostname = os.uname().nodename
    assert f"h2: at {address('h2')}\nh2: {hostname}\nh2: exit 0\n" in ran.stdout
    assert f"h3: at {address('h3')}\nh3: {hostname}\nh3: exit 0\n" in ran.stdout
    assert "installing" in ran.stderr  # the control node's venv had no hpcinfer
    source = "import hpcinfer._build as b; print(b.SOURCE_HASH)"
    probe = [str(site.venv / "bin" / "python"), "-c", source]
    installed = site.hosts.run("h1", probe, env={"PATH": os.environ["PATH"]})
    assert installed.returncode == 0 and installed.stdout.strip(), installed.stderr
    copied = site.state() / "file" / "cluster.yaml"
    assert copied.read_text() == site.file.read_text()

    again = site.run("compute", "true")
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr  # the same build is there: nothing installed


def test_a_command_failing_on_one_host_fails_naming_it(site: Site) -> None:
    h3 = site.hosts.address("h3")
    ran = site.run("compute", f'[ "$HPCINFER_COORDINATOR_HOST" != {h3} ] || exit 5')
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "h2: exit 0" in ran.stdout and "h3: exit 5" in ran.stdout
    assert "failed on 1 of 2 node(s): h3 (exit 5)" in ran.stderr

    ran = site.run("compute", "--json", "exit 2")
    result = json.loads(ran.stdout)
    assert ran.returncode == 1
    assert [(h["host"], h["exit_code"]) for h in result["hosts"]] == [("h2", 2), ("h3", 2)]


def test_control_runs_on_the_control_node_in_the_workdir(site: Site) -> None:
    ran = site.run("control", "echo $HPCINFER_COORDINATOR_HOST; pwd")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [site.hosts.address("h1"), str(site.workdir)]
    assert site.run("control", "exit 3").returncode == 3


def test_sync_copies_the_project_to_the_control_node_without_venvs_or_outputs(
    site: Site,
) -> None:
    project = site.root / "project"
    for name in ("run.yaml", "prompts/p.txt", "lib/tool.py", "lib/__pycache__/tool.pyc",
                 "myenv/pyvenv.cfg", "myenv/bin/python", "out/rows.jsonl",
                 "results/run.json", "results/results.jsonl", ".git/HEAD"):  # fmt: skip
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    ran = site.run("sync", cwd=project)
    assert ran.returncode == 0, ran.stderr
    copied = sorted(
        p.relative_to(site.workdir).as_posix() for p in site.workdir.rglob("*") if p.is_file()
    )
    assert copied == [".hpcinfer-workdir", "lib/tool.py", "prompts/p.txt", "run.yaml"]
    copied.remove(".hpcinfer-workdir")  # sync's marker: the folder is its own
    assert sorted(ran.stdout.split()) == copied  # what it copied, listed
    assert "3 file(s) copied" in ran.stderr


def test_status_names_a_compute_node_that_is_down(site: Site) -> None:
    ran = site.run("status", "--json")
    status = json.loads(ran.stdout)
    nodes = {n["node"]: n for n in status["nodes"]}
    assert all(n["reachable"] for n in nodes.values()), status
    assert nodes["h1"]["versions"]["hpcinfer"] == "0.1.0"
    assert ran.returncode == 1  # no Ray cluster runs
    assert not status["ray_ok"]

    data = yaml.safe_load(site.file.read_text())
    data["compute"][1]["address"] = "10.213.0.254"  # nothing there
    gone = site.root / "gone.yaml"
    gone.write_text(yaml.safe_dump(data))
    site.file, kept = gone, site.file
    try:
        ran = site.run("status")
    finally:
        site.file = kept
    assert ran.returncode == 1
    assert "h3" in ran.stdout and "NO" in ran.stdout and "ssh could not reach it" in ran.stdout


def test_verify_of_a_cluster_not_configured_fails_naming_the_host(site: Site) -> None:
    """The shipped verify playbook, run by Ansible on h1 (forwarded from h2), with Ansible's
    output coming back as progress: no Ray cluster runs, so the control node fails."""
    ran = site.run("verify", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    result = json.loads(ran.stdout)
    assert "PLAY [Verify the Ray cluster against the inventory]" in ran.stderr
    assert [f["task"] for f in result["failures"]] == ["Check that the head answers"]
    assert result["failures"][0]["host"] == "h1"
    assert "the Ray cluster of" in result["failures"][0]["message"]
    assert "verify failed on h1" in ran.stderr
    assert Path(result["log"]).is_file()
