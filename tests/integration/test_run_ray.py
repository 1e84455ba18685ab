"""`hpcinfer run --launcher ray` on a real 3-host Ray cluster with the CPU vLLM.

The hosts are the test hosts (network namespaces h1 h2 h3 with an sshd each); the cluster
comes from `hpcinfer ray up --launcher ssh` run inside h1, the allocation's first node, and
every hpcinfer command runs there too. One actor per host: an actor killed mid-run (its
process on h2) and the job still completes, every record exactly once, the other actors
doing its units; hpcinfer killed takes every actor and worker down, and a rerun resumes.
No actor or worker process is left after any run. The module shares one cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcinfer.raycluster.cluster_file import RayClusterFile, load_cluster
from hpcinfer.testing.netns_hosts import NetnsHosts
from tests.conftest import read_rows, require, write_prompts
from tests.harness import exited, wait_for
from tests.processes import children, command_lines, titled

pytestmark = pytest.mark.integration

ACTOR_TITLE = "ray::WorkerActor"
COMMON = ["--max-tokens", "16", "--ignore-eos", "--unit-size", "4", "--max-num-seqs", "4",
          "--kv-cache-bytes", str(256 << 20), "--json"]  # fmt: skip
UP_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 300.0
RECORDS = 360


@dataclass
class RayCluster:
    """The cluster `hpcinfer ray up` started on the test hosts for this module."""

    hosts: NetnsHosts
    cluster_file: Path
    record: RayClusterFile
    env: dict[str, str]

    def hpcinfer(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """`hpcinfer ARGS` inside h1, to its end."""
        argv = [sys.executable, "-m", "hpcinfer", *args]
        return self.hosts.run("h1", argv, timeout=RUN_TIMEOUT_S, env=self.env, cwd=str(cwd))

    def start(self, args: list[str], cwd: Path) -> subprocess.Popen[str]:
        """`hpcinfer ARGS` started inside h1 (the process is hpcinfer itself: `ip netns
        exec` execs it)."""
        argv = [sys.executable, "-m", "hpcinfer", *args]
        return self.hosts.popen("h1", argv, env=self.env, cwd=str(cwd), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def actors(self, host: str | None = None) -> list[int]:
        """The job actors' processes now, on `host` or on any host."""
        names = [host] if host else list(self.hosts.names)
        return titled([pid for name in names for pid in self.hosts.pids(name)], ACTOR_TITLE)


@pytest.fixture(scope="module")
def ray_cluster(
    test_hosts: NetnsHosts, tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]
) -> Iterator[RayCluster]:
    require("Ray", importlib.util.find_spec("ray") is not None, "pip install 'hpcinfer[ray]'")
    work = tmp_path_factory.mktemp("ray")
    cluster_file = work / "cluster.json"
    # a raylet waits 15 s for its agents by default: too short on a loaded 2-core machine
    env = test_hosts.env(dict(cli_env, RAY_raylet_start_wait_time_s="60"))
    up = test_hosts.run(
        "h1",
        [sys.executable, "-m", "hpcinfer", "ray", "up", "--hostfile", str(test_hosts.hostfile),
         "--launcher", "ssh", "--interface", test_hosts.interface, "--gpus-per-node", "0",
         "--cpus-per-node", "1", "--name", f"run{os.getpid()}", "--cluster-file",
         str(cluster_file), "--ready-timeout", "150s", "--stagger", "0.5s", "--json"],
        timeout=UP_TIMEOUT_S, env=env, cwd=str(work),
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield RayCluster(test_hosts, cluster_file, load_cluster(cluster_file), env)
    finally:
        down = test_hosts.run(
            "h1",
            [sys.executable, "-m", "hpcinfer", "ray", "down", "--cluster-file", str(cluster_file)],
            timeout=120, env=env, cwd=str(work),
        )  # fmt: skip
        assert down.returncode == 0 or not cluster_file.exists(), down.stderr[-3000:]


def _args(cluster: RayCluster, *extra: str) -> list[str]:
    return ["run", "prompts.txt", "-o", "out", "--launcher", "ray",
            "--ray-cluster", str(cluster.cluster_file), *COMMON, *extra]  # fmt: skip


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


def _workers_logging_to(out: Path) -> list[int]:
    """Processes writing their output into the job's logs/ (its workers, wherever they
    ran and whoever their parent is now)."""
    logs = str((out / "logs").resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "fd" / "1").startswith(logs):
                    found.append(int(proc.name))
    return _alive(found)


def _assert_nothing_left(cluster: RayCluster, out: Path) -> None:
    def left() -> list[int]:
        return [*cluster.actors(), *_workers_logging_to(out)]

    wait_for(lambda: not left(), 60, "the job's actors and workers to be gone",
             state=lambda: command_lines(left()), interval=0.3)  # fmt: skip


def _assert_exactly_once(out: Path, count: int) -> None:
    rows = read_rows(out / "results.jsonl")
    assert [r["id"] for r in rows] == [f"prompts.txt:{i}" for i in range(1, count + 1)]
    assert all(r["status"] == "ok" for r in rows)
    assert sum(len(read_rows(p)) for p in (out / "units").glob("*.jsonl")) == count


def _worker_units(out: Path, worker: int) -> int:
    """Units committed by `worker` (its number is in every row it wrote)."""
    return sum(
        1 for unit in (out / "units").glob("*.jsonl") if read_rows(unit)[0]["worker"] == worker
    )


def _actor_of_worker(cluster: RayCluster, host: str, out: Path, worker: int) -> int:
    """The actor process on `host` whose child logs to worker-<worker>.log."""
    log = str((out / "logs" / f"worker-{worker}.log").resolve())
    for actor in cluster.actors(host):
        for child in children(actor):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child}/fd/1") == log:
                    return actor
    raise AssertionError(f"no actor on {host} runs worker {worker}")


def test_an_actor_killed_mid_run_on_one_host_and_the_job_completes(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    """One actor per host (workers numbered by host: h2's is worker 1). h2's actor is
    killed once its worker has committed a unit (it holds more: units are granted ahead of
    the engine); Ray does not restart it, its worker dies with it, and the coordinator gives
    its units to h1's and h3's: every record exactly once, nothing left running."""
    # enough work that h2's worker has some however much later than the others it starts
    write_prompts(tmp_path / "prompts.txt", RECORDS)
    out = tmp_path / "out"
    proc = ray_cluster.start(_args(ray_cluster), tmp_path)
    try:
        wait_for(lambda: _worker_units(out, 1) >= 1, 240, "a unit of h2's worker",
                 give_up=lambda: exited(proc))  # fmt: skip
        os.kill(_actor_of_worker(ray_cluster, "h2", out, 1), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    _assert_exactly_once(out, RECORDS)
    summary = json.loads(stdout)
    hosts = {w["worker"]: w["host"] for w in summary["workers"]}
    assert hosts == {0: "h1", 1: "h2", 2: "h3"}, summary["workers"]
    (lost,) = [w for w in summary["workers"] if w["worker"] == 1]
    assert "lost" in (lost["error"] or ""), summary["workers"]
    assert "redid its units" in summary["message"]
    done_by_others = sum(w["records"] for w in summary["workers"] if w["worker"] != 1)
    assert done_by_others >= RECORDS - 4 * _worker_units(out, 1)
    _assert_nothing_left(ray_cluster, out)


def test_killing_hpcinfer_takes_every_actor_down_and_a_rerun_resumes(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    write_prompts(tmp_path / "prompts.txt", 160)
    out = tmp_path / "out"
    proc = ray_cluster.start(_args(ray_cluster), tmp_path)
    try:
        wait_for(lambda: list((out / "units").glob("*.jsonl")), 240, "a committed unit",
                 give_up=lambda: exited(proc))  # fmt: skip
        wait_for(lambda: all(ray_cluster.actors(h) for h in ray_cluster.hosts.names), 60,
                 "an actor on every host", give_up=lambda: exited(proc))  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)  # the driver: Ray ends its actors, the workers go
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_nothing_left(ray_cluster, out)
    committed = len(list((out / "units").glob("*.jsonl")))
    # one actor is enough to finish (and one engine starts faster than three on 2 cores)
    rerun = ray_cluster.hpcinfer(_args(ray_cluster, "--workers", "1"), tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] is True
    assert summary["records_this_run"] == 160 - 4 * committed
    _assert_exactly_once(out, 160)
    _assert_nothing_left(ray_cluster, out)
