"""`hpcinfer ray up | status | down` with real Ray on the three test hosts (network
namespaces with an sshd each; hpcinfer runs inside h1, the allocation's first node).

One cluster is brought up for the module and checked, damaged (a worker's raylet killed)
and taken down; the failure cases (a host that cannot join, a host with other versions)
each try their own `up`, which must fail naming the host and leave nothing running.
Every command has a timeout; waits poll for conditions.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcinfer.raycluster.layout import cluster_root
from hpcinfer.testing.netns_hosts import NetnsHosts
from tests.conftest import require
from tests.harness import wait_for

pytestmark = pytest.mark.integration

GPUS = 2
READY_TIMEOUT = "150s"
COMMAND_TIMEOUT_S = 240.0
RAY_PACKAGE = str(Path(__import__("ray").__file__).parent)


def _hpcinfer(
    hosts: NetnsHosts, *args: str, cwd: Path, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`hpcinfer ARGS` run inside h1, with the hosts' ssh config and this Python."""
    argv = [sys.executable, "-m", "hpcinfer", *args]
    return hosts.run("h1", argv, timeout=timeout, env=hosts.env(), cwd=str(cwd))


def _status(hosts: NetnsHosts, cluster: dict, *args: str) -> subprocess.CompletedProcess[str]:
    """`hpcinfer ray status` of the module's cluster, inside h1."""
    file = str(cluster["file"])
    return _hpcinfer(
        hosts, "ray", "status", "--cluster-file", file, *args, cwd=cluster["work"], timeout=60
    )


def _up_args(hosts: NetnsHosts, name: str, cluster_file: Path, hostfile: Path) -> list[str]:
    return [
        "ray",
        "up",
        "--hostfile",
        str(hostfile),
        "--launcher",
        "ssh",
        "--interface",
        hosts.interface,
        "--gpus-per-node",
        str(GPUS),
        "--cpus-per-node",
        "1",
        "--name",
        name,
        "--cluster-file",
        str(cluster_file),
        "--ready-timeout",
        READY_TIMEOUT,
        "--stagger",
        "0.5s",
    ]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _ray_processes(hosts: NetnsHosts, root: Path) -> list[str]:
    """Every live process of Ray on the test hosts or naming the cluster's temp root: a
    Ray binary or Python program (by its path), a renamed Ray worker (`ray::...`)."""
    found = []
    pids = {pid for name in hosts.names for pid in hosts.pids(name)}
    pids |= {
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(root) in _command(int(p.name))
    }
    for pid in sorted(pids):
        command = _command(pid)
        if _live(pid) and (
            RAY_PACKAGE in command or command.startswith("ray::") or str(root) in command
        ):
            found.append(f"{pid}: {command[:160]}")
    return found


def _kill_leftovers(hosts: NetnsHosts, root: Path) -> None:
    """After a failed test: nothing of ours may outlive the module (then the test fails)."""
    for line in _ray_processes(hosts, root):
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(test_hosts: NetnsHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One 3-host cluster for the module: up once, handed to the tests in order."""
    work = tmp_path_factory.mktemp("ray")
    name = f"it{os.getpid()}"
    cluster_file = work / "cluster.json"
    started = time.monotonic()
    done = _hpcinfer(
        test_hosts,
        *_up_args(test_hosts, name, cluster_file, test_hosts.hostfile),
        "--json",
        cwd=work,
    )
    root = cluster_root(name, record=str(cluster_file))
    try:
        assert done.returncode == 0, done.stderr
        yield {
            "work": work,
            "file": cluster_file,
            "record": json.loads(done.stdout),
            "root": root,
            "up_s": time.monotonic() - started,
        }
    finally:
        if cluster_file.exists():
            _hpcinfer(test_hosts, "ray", "down", "--cluster-file", str(cluster_file), cwd=work)
        _kill_leftovers(test_hosts, root)


def test_up_is_ready_on_three_hosts_with_their_gpus(test_hosts: NetnsHosts, cluster: dict) -> None:
    hosts = test_hosts
    record = cluster["record"]
    assert json.loads(cluster["file"].read_text()) == record
    assert [n["host"] for n in record["nodes"]] == ["h1", "h2", "h3"]
    assert [n["address"] for n in record["nodes"]] == [hosts.address(h) for h in hosts.names]
    assert all(n["gpus"] == GPUS and n["cpus"] == 1 for n in record["nodes"])
    assert record["address"] == f"{hosts.address('h1')}:{record['ports']['gcs']}"
    # each host runs its own raylet, in its own namespace, in its own temp dir
    for name in hosts.names:
        raylets = [_command(p) for p in hosts.pids(name) if "/raylet/raylet " in _command(p)]
        assert len(raylets) == 1, (name, raylets)
        assert f"{record['temp_root']}/{name} " in raylets[0].replace("--temp_dir=", " ") + " "
    status = _status(hosts, cluster, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["ok"] and [r["state"] for r in report["nodes"]] == ["alive"] * 3
    assert {r["versions"]["ray"] for r in report["nodes"]} == {__import__("ray").__version__}


def test_status_names_a_worker_host_whose_raylet_was_killed(
    test_hosts: NetnsHosts, cluster: dict
) -> None:
    hosts = test_hosts
    (raylet,) = [p for p in hosts.pids("h3") if "/raylet/raylet " in _command(p)]
    os.kill(raylet, signal.SIGKILL)
    wait_for(lambda: not _live(raylet), 10, "h3's raylet to die")
    status = _status(hosts, cluster, "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert not report["ok"]
    assert [p.split(":")[0] for p in report["problems"]] == ["h3"], report["problems"]
    table = _status(hosts, cluster)
    assert table.returncode == 1 and "h3" in table.stdout and "does NOT match" in table.stdout


def test_down_leaves_no_process_behind(test_hosts: NetnsHosts, cluster: dict) -> None:
    """Down on the damaged cluster: h3's agents without their raylet go too."""
    hosts = test_hosts
    assert _ray_processes(hosts, cluster["root"]), "the cluster runs before down"
    done = _hpcinfer(
        hosts,
        "ray",
        "down",
        "--cluster-file",
        str(cluster["file"]),
        cwd=cluster["work"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "is down" in done.stderr
    assert not cluster["file"].exists()
    assert _ray_processes(hosts, cluster["root"]) == []
    assert not cluster["root"].exists()


def test_a_host_that_cannot_join_fails_up_in_time_naming_it(
    test_hosts: NetnsHosts, tmp_path: Path
) -> None:
    hosts = test_hosts
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1\nh2\nh3\nh4\n")  # h4: no such host in the ssh config
    name, cluster_file = f"it{os.getpid()}-h4", tmp_path / "cluster.json"
    root = cluster_root(name, record=str(cluster_file))
    started = time.monotonic()
    done = _hpcinfer(hosts, *_up_args(hosts, name, cluster_file, hostfile), cwd=tmp_path)
    try:
        assert done.returncode == 1, done.stderr
        assert time.monotonic() - started < 150 + 60  # the deadline and the take-down
        assert "h4: ssh could not reach it" in done.stderr
        assert "h1:" not in done.stderr and "h2:" not in done.stderr
        assert not cluster_file.exists()
        assert _ray_processes(hosts, root) == []
    finally:
        _kill_leftovers(hosts, root)


def test_a_host_with_other_versions_is_refused_naming_it(
    test_hosts: NetnsHosts, tmp_path: Path
) -> None:
    hosts = test_hosts
    hosts.set_env("h2", {"HPCINFER_RAY_FINGERPRINT": "vllm=0.0.1-fake"})
    name, cluster_file = f"it{os.getpid()}-mm", tmp_path / "cluster.json"
    root = cluster_root(name, record=str(cluster_file))
    try:
        done = _hpcinfer(hosts, *_up_args(hosts, name, cluster_file, hosts.hostfile), cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "h2: versions differ: vllm 0.0.1-fake (head: " in done.stderr
        assert "h3: versions" not in done.stderr
        assert not cluster_file.exists()
        assert _ray_processes(hosts, root) == []
    finally:
        hosts.set_env("h2", {})
        _kill_leftovers(hosts, root)


def test_under_mpi_each_node_command_holds_until_down(tmp_path: Path) -> None:
    """--launcher mpi (here one host, this machine): the node command stays as long as its
    node's Ray, so a scheduler that ends a launch's processes with the launch keeps Ray;
    `down` ends both."""
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    require("MPI (mpiexec)", Path(mpiexec).exists(), "pip install mpich")
    name, cluster_file = f"it{os.getpid()}-mpi", tmp_path / "cluster.json"
    root = cluster_root(name, record=str(cluster_file))
    argv = [
        sys.executable,
        "-m",
        "hpcinfer",
        "ray",
        "up",
        "--launcher",
        "mpi",
        "--name",
        name,
        "--cluster-file",
        str(cluster_file),
        "--gpus-per-node",
        "1",
        "--cpus-per-node",
        "1",
        "--ready-timeout",
        READY_TIMEOUT,
    ]

    def held() -> list[int]:  # the node command, held by its launcher
        node_start = shlex.join([sys.executable, "-m", "hpcinfer", "ray", "node-start"])
        return [p for p in _pids() if _command(p).startswith(node_start) and name in _command(p)]

    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert len(held()) == 1, "the node command holds while Ray runs"
        status = subprocess.run(
            [*argv[:4], "status", "--cluster-file", str(cluster_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        down = subprocess.run(
            [*argv[:4], "down", "--cluster-file", str(cluster_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr
        wait_for(lambda: not held(), 30, "the held node command to end after down")
        assert [p for p in _pids() if str(root) in _command(p)] == []
        assert not cluster_file.exists() and not root.exists()
    finally:  # a failed check: down stops the node's renamed daemons too, then kill the rest
        if cluster_file.exists():
            down_argv = [*argv[:4], "down", "--cluster-file", str(cluster_file)]
            subprocess.run(down_argv, capture_output=True, timeout=120)
        for pid in [*held(), *(p for p in _pids() if str(root) in _command(p))]:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _live(int(p.name))]


def test_a_terminated_up_takes_its_cluster_down_and_blocks_a_second_up(
    test_hosts: NetnsHosts, tmp_path: Path
) -> None:
    """The cluster file exists ("starting") from the start, so a second `up` of it is
    refused; SIGTERM (a cancelled job) takes down what was started and removes the file."""
    hosts = test_hosts
    name, cluster_file = f"it{os.getpid()}-term", tmp_path / "cluster.json"
    root = cluster_root(name, record=str(cluster_file))
    args = _up_args(hosts, name, cluster_file, hosts.hostfile)
    args[args.index("--stagger") + 1] = "3s"  # the workers are still to come at SIGTERM
    argv = [sys.executable, "-m", "hpcinfer", *args]
    up = hosts.popen(
        "h1", argv, env=hosts.env(), cwd=str(tmp_path), stderr=subprocess.PIPE, text=True
    )
    try:

        def head_runs() -> bool:
            raylets = [p for p in hosts.pids("h1") if "/raylet/raylet " in _command(p)]
            return any(str(root) in _command(p) for p in raylets)

        wait_for(head_runs, 120, "the head's raylet on h1")
        assert json.loads(cluster_file.read_text())["state"] == "starting"
        second = _hpcinfer(
            hosts, *_up_args(hosts, name, cluster_file, hosts.hostfile), cwd=tmp_path
        )
        assert second.returncode == 1, second.stderr
        assert f"already recorded in {cluster_file}" in second.stderr
        assert f"hpcinfer ray down --cluster-file {cluster_file}" in second.stderr
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=COMMAND_TIMEOUT_S)
        assert up.returncode == 1, stderr
        assert "stopped by SIGTERM" in stderr
        assert _ray_processes(hosts, root) == []
        assert not cluster_file.exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if cluster_file.exists():
            _hpcinfer(hosts, "ray", "down", "--cluster-file", str(cluster_file), cwd=tmp_path)
        _kill_leftovers(hosts, root)
