"""`hpcinfer run --launcher ray` on a real Ray cluster with real actors and the CPU vLLM.

The cluster is one Ray node of this test's own (its own ports and temp dir; stopped by
its processes, never `ray stop`, which would end every Ray of the user), with two actors
on it (`--workers 2`): every record exactly once; an actor killed mid-run and the other
actor finishes the job; hpcinfer killed and no actor or worker is left, and a rerun
resumes. The module shares one cluster (about 15 s to start).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import hpcinfer_cmd, read_rows, require, run_cli, start_cli, write_prompts
from tests.harness import exited, wait_for
from tests.processes import children, command_lines, titled

pytestmark = pytest.mark.integration

ACTOR_TITLE = "ray::WorkerActor"
COMMON = ["--max-tokens", "16", "--ignore-eos", "--unit-size", "4", "--max-num-seqs", "4",
          "--kv-cache-bytes", str(256 << 20), "--json"]  # fmt: skip
CLUSTER_START_S = 180.0
STOP_GRACE_S = 8.0


@dataclass
class LocalRay:
    """A one-node Ray cluster of this module's own."""

    proc: subprocess.Popen[str]
    address: str
    cluster_file: Path
    temp_dir: Path

    def processes(self) -> list[int]:
        """Every process of the cluster (the raylet's workers, the actors) now."""
        return _descendants(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM to every process of this cluster, then SIGKILL to what is left."""
        pids = [self.proc.pid, *self.processes()]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S  # Ray's daemons may ignore SIGTERM
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _alive(pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.append(pid)
    return alive


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1."""
    base = 30000 + (os.getpid() % 500) * 40
    while base < 60000:
        if all(_port_free(base + i) for i in range(count)):
            return base
        base += count
    raise AssertionError(f"no {count} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRay]:
    require("Ray", importlib.util.find_spec("ray") is not None, "pip install 'hpcinfer[ray]'")
    # a short path: Ray's unix sockets live under the temp dir (108 characters at most)
    temp_dir = Path(tempfile.mkdtemp(prefix="hpci-ray-", dir="/tmp"))
    base = _free_ports(64)
    ports = {
        "--port": base, "--ray-client-server-port": base + 1, "--dashboard-port": base + 2,
        "--dashboard-agent-grpc-port": base + 3, "--dashboard-agent-listen-port": base + 4,
        "--metrics-export-port": base + 5, "--node-manager-port": base + 6,
        "--object-manager-port": base + 7, "--runtime-env-agent-port": base + 8,
        "--min-worker-port": base + 16, "--max-worker-port": base + 63,
    }  # fmt: skip
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp_dir), "--num-cpus", "2", "--include-dashboard=false",
            "--disable-usage-stats", "--labels", '{"hpcinfer-node": "local"}']  # fmt: skip
    for flag, port in ports.items():
        argv += [flag, str(port)]
    env = dict(os.environ, RAY_agent_register_timeout_ms="120000")
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{base}"
    cluster_file = tmp_path_factory.mktemp("ray") / "cluster.json"
    cluster_file.write_text(json.dumps({"name": "test", "address": address}))
    cluster = LocalRay(proc, address, cluster_file, temp_dir)
    try:
        wait_for(
            lambda: _node_alive(address),
            CLUSTER_START_S,
            f"the Ray node at {address}",
            give_up=lambda: exited(proc),
            interval=0.5,
        )
        yield cluster
    finally:
        cluster.stop()


def _node_alive(address: str) -> bool:
    from ray._raylet import GcsClient

    try:
        nodes = GcsClient(address=address).get_all_node_info(timeout=2)
    except Exception:
        return False
    return any(info.state == 0 for info in nodes.values())


def _job_processes(cluster: LocalRay, out: Path) -> list[int]:
    """The job's actors on the cluster, and the worker processes logging into `out`
    (wherever they were re-parented)."""
    actors = titled(cluster.processes(), ACTOR_TITLE)
    logs = str((out / "logs").resolve())
    workers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "fd" / "1").startswith(logs):
                    workers.append(int(proc.name))
    return [*actors, *_alive(workers)]


def _assert_nothing_left(cluster: LocalRay, out: Path) -> None:
    wait_for(
        lambda: not _job_processes(cluster, out),
        60,
        "the job's actors and workers to be gone",
        state=lambda: command_lines(_job_processes(cluster, out)),
        interval=0.3,
    )


def _assert_exactly_once(out: Path, count: int) -> None:
    rows = read_rows(out / "results.jsonl")
    assert [r["id"] for r in rows] == [f"prompts.txt:{i}" for i in range(1, count + 1)]
    assert all(r["status"] == "ok" for r in rows)
    assert sum(len(read_rows(p)) for p in (out / "units").glob("*.jsonl")) == count


def _args(cluster: LocalRay, *extra: str) -> list[str]:
    return ["run", "prompts.txt", "-o", "out", "--launcher", "ray",
            "--ray-cluster", str(cluster.cluster_file), *COMMON, *extra]  # fmt: skip


def _worker_units(out: Path, worker: int) -> int:
    """Units committed by `worker` (its number is in every row it wrote)."""
    return sum(
        1 for unit in (out / "units").glob("*.jsonl") if read_rows(unit)[0]["worker"] == worker
    )


def test_two_actors_do_every_record_once_and_leave_nothing(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: LocalRay
) -> None:
    write_prompts(tmp_path / "prompts.txt", 120)
    done = run_cli(_args(ray_cluster, "--workers", "2"), tmp_path, cli_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    _assert_exactly_once(tmp_path / "out", 120)
    assert sorted(w["worker"] for w in summary["workers"]) == [0, 1]
    assert {w["host"] for w in summary["workers"]} == {"local"}  # the node's hpcinfer label
    assert sum(w["records"] for w in summary["workers"]) == 120
    _assert_nothing_left(ray_cluster, tmp_path / "out")


def test_a_killed_actor_s_units_go_to_the_other(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: LocalRay
) -> None:
    """Actor 1 is killed once its worker has committed a unit (it holds more: units are
    granted ahead of the engine); Ray does not restart it, its worker dies with it, and the
    coordinator gives its units to actor 0: the job completes, every record once."""
    write_prompts(tmp_path / "prompts.txt", 240)
    out = tmp_path / "out"
    proc = start_cli(hpcinfer_cmd(*_args(ray_cluster, "--workers", "2")), tmp_path, cli_env)
    try:
        wait_for(lambda: _worker_units(out, 1) >= 1, 240, "a unit of worker 1",
                 give_up=lambda: exited(proc))  # fmt: skip
        actor = _actor_of_worker(ray_cluster, out, 1)
        os.kill(actor, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    _assert_exactly_once(out, 240)
    summary = json.loads(stdout)
    (lost,) = [w for w in summary["workers"] if w["worker"] == 1]
    assert "lost" in (lost["error"] or ""), summary["workers"]
    assert "redid its units" in summary["message"]
    _assert_nothing_left(ray_cluster, out)


def _actor_of_worker(cluster: LocalRay, out: Path, worker: int) -> int:
    """The actor process whose child logs to worker-<worker>.log."""
    log = str((out / "logs" / f"worker-{worker}.log").resolve())
    for actor in titled(cluster.processes(), ACTOR_TITLE):
        for child in children(actor):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child}/fd/1") == log:
                    return actor
    raise AssertionError(f"no actor runs worker {worker}: {command_lines(cluster.processes())}")


def test_killing_hpcinfer_takes_its_actors_down_and_a_rerun_resumes(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: LocalRay
) -> None:
    write_prompts(tmp_path / "prompts.txt", 160)
    out = tmp_path / "out"
    proc = start_cli(hpcinfer_cmd(*_args(ray_cluster)), tmp_path, cli_env)
    wait_for(lambda: list((out / "units").glob("*.jsonl")), 240, "a committed unit",
             give_up=lambda: exited(proc))  # fmt: skip
    assert _job_processes(ray_cluster, out), "the actor and its worker run"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    _assert_nothing_left(ray_cluster, out)
    committed = len(list((out / "units").glob("*.jsonl")))
    rerun = run_cli(_args(ray_cluster), tmp_path, cli_env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] is True
    assert summary["records_this_run"] == 160 - 4 * committed
    _assert_exactly_once(out, 160)
    _assert_nothing_left(ray_cluster, out)
