"""`hpcinfer run --launcher ray` on a real Ray cluster with real actors and the CPU vLLM.

The cluster is one node on this machine from `hpcinfer ray up --launcher local` (its own
ports and temp dir; `hpcinfer ray down` stops only its processes), with two actors on it
(`--workers 2`): every record exactly once and nothing left; an actor killed mid-run and the
other finishes the job; hpcinfer killed takes its actors down, and a rerun resumes. The
module shares one cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcinfer.raycluster.cluster_file import RayClusterFile, load_cluster
from tests.conftest import hpcinfer_cmd, read_rows, require, run_cli, start_cli, write_prompts
from tests.harness import exited, wait_for
from tests.processes import children, command_lines, titled

pytestmark = pytest.mark.integration

ACTOR_TITLE = "ray::WorkerActor"
COMMON = ["--max-tokens", "16", "--ignore-eos", "--unit-size", "4", "--max-num-seqs", "4",
          "--kv-cache-bytes", str(256 << 20), "--json"]  # fmt: skip
UP_TIMEOUT_S = 240.0


@dataclass
class RayCluster:
    """A cluster `hpcinfer ray up` started for this module, and its record."""

    cluster_file: Path
    record: RayClusterFile

    def processes(self) -> list[int]:
        """Every process below this cluster's raylets (its Ray workers, the actors) now."""
        root = self.record.temp_root.encode()
        raylets = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"raylet" in cmdline.split(b"\0")[0] and root in cmdline:
                        raylets.append(int(proc.name))
        return [pid for raylet in raylets for pid in _descendants(raylet)]


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


@pytest.fixture(scope="module")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]
) -> Iterator[RayCluster]:
    require("Ray", importlib.util.find_spec("ray") is not None, "pip install 'hpcinfer[ray]'")
    work = tmp_path_factory.mktemp("ray")
    cluster_file = work / "cluster.json"
    up = run_cli(
        ["ray", "up", "--launcher", "local", "--name", f"run{os.getpid()}", "--cluster-file",
         str(cluster_file), "--cpus-per-node", "2", "--gpus-per-node", "0",
         "--ready-timeout", "150s", "--json"],
        work,
        # a raylet waits 15 s for its agents by default: too short on a loaded 2-core machine
        dict(cli_env, RAY_raylet_start_wait_time_s="60"),
        timeout=UP_TIMEOUT_S,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield RayCluster(cluster_file, load_cluster(cluster_file))
    finally:
        down = run_cli(["ray", "down", "--cluster-file", str(cluster_file)], work, cli_env, 120)
        assert down.returncode == 0 or not cluster_file.exists(), down.stderr[-3000:]


def _job_processes(cluster: RayCluster, out: Path) -> list[int]:
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


def _assert_nothing_left(cluster: RayCluster, out: Path) -> None:
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


def _args(cluster: RayCluster, *extra: str) -> list[str]:
    return ["run", "prompts.txt", "-o", "out", "--launcher", "ray",
            "--ray-cluster", str(cluster.cluster_file), *COMMON, *extra]  # fmt: skip


def _worker_units(out: Path, worker: int) -> int:
    """Units committed by `worker` (its number is in every row it wrote)."""
    return sum(
        1 for unit in (out / "units").glob("*.jsonl") if read_rows(unit)[0]["worker"] == worker
    )


def test_two_actors_do_every_record_once_and_leave_nothing(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: RayCluster
) -> None:
    write_prompts(tmp_path / "prompts.txt", 120)
    done = run_cli(_args(ray_cluster, "--workers", "2"), tmp_path, cli_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    _assert_exactly_once(tmp_path / "out", 120)
    assert sorted(w["worker"] for w in summary["workers"]) == [0, 1]
    # the node's name in the allocation, as ray up labelled it
    assert {w["host"] for w in summary["workers"]} == {ray_cluster.record.nodes[0].host}
    assert sum(w["records"] for w in summary["workers"]) == 120
    _assert_nothing_left(ray_cluster, tmp_path / "out")


def test_a_killed_actor_s_units_go_to_the_other(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: RayCluster
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


def _actor_of_worker(cluster: RayCluster, out: Path, worker: int) -> int:
    """The actor process whose child logs to worker-<worker>.log."""
    log = str((out / "logs" / f"worker-{worker}.log").resolve())
    for actor in titled(cluster.processes(), ACTOR_TITLE):
        for child in children(actor):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child}/fd/1") == log:
                    return actor
    raise AssertionError(f"no actor runs worker {worker}: {command_lines(cluster.processes())}")


def test_killing_hpcinfer_takes_its_actors_down_and_a_rerun_resumes(
    tmp_path: Path, cli_env: dict[str, str], ray_cluster: RayCluster
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
