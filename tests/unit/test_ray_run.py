"""`hpcinfer run --launcher ray` without a cluster: which actors a cluster gets, where the
cluster comes from, what an actor's worker is started with, and the errors before anything
starts. The real thing (actors on a live Ray cluster) is tests/integration/test_run_ray.py."""

from __future__ import annotations

import socket
import sys
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.errors import HardwareError, InputError, LaunchError, SpecError
from hpcinfer.outputs.store import OutputStore
from hpcinfer.raycluster.cluster_file import RayClusterFile, now_text, save_cluster
from hpcinfer.raycluster.ports import ray_ports
from hpcinfer.run import ray_job, spawn
from hpcinfer.run.joins import JoinListener
from hpcinfer.run.ray_actor import ActorTask, start_worker
from hpcinfer.run.ray_job import (
    actor_env,
    actor_tasks,
    check_ray_installed,
    check_reachable,
    cluster_address,
)
from hpcinfer.run.ray_placement import RayNode, plan_actors, ray_nodes, slot_of_gpus
from hpcinfer.run.worker import COORDINATOR_KEY_ENV, WORKER_HELLO_ENV
from hpcinfer.spec import JobSpec
from tests.harness import InProcessCLI, wait_for


def _node(name: str, gpus: int = 0, cpus: int = 8) -> RayNode:
    return RayNode(node_id=f"id-{name}", host=name, address=f"10.0.0.{name[-1]}", gpus=gpus,
                   cpus=cpus)  # fmt: skip


# -- which actors -----------------------------------------------------------------------------


def test_gpu_nodes_get_one_actor_per_tp_group_spread_over_the_nodes() -> None:
    actors = plan_actors([_node("n1", 4), _node("n2", 4)], tp=2, use_gpus=True)
    assert [(a.index, a.node.host, a.slot, a.node_slots) for a in actors] == [
        (0, "n1", 0, 2), (1, "n2", 0, 2), (2, "n1", 1, 2), (3, "n2", 1, 2),
    ]  # fmt: skip
    assert all(a.resources() == {"num_gpus": 2, "num_cpus": 1} for a in actors)


def test_gpus_left_over_by_tp_stay_idle_and_small_nodes_get_none() -> None:
    actors = plan_actors([_node("n1", 3), _node("n2", 1)], tp=2, use_gpus=True)
    assert [(a.node.host, a.slot) for a in actors] == [("n1", 0)]


def test_no_node_big_enough_for_one_engine_is_refused_naming_the_sizes() -> None:
    with pytest.raises(HardwareError, match=r"--tp 8.*n1: 4, n2: 4.*--gpus-per-node"):
        plan_actors([_node("n1", 4), _node("n2", 4)], tp=8, use_gpus=True)


def test_cpu_engines_get_one_actor_per_node_whatever_gpus_the_cluster_declares() -> None:
    actors = plan_actors([_node("n1", 4), _node("n2", 4), _node("n3")], tp=1, use_gpus=False)
    assert [(a.node.host, a.node_slots) for a in actors] == [("n1", 1), ("n2", 1), ("n3", 1)]
    assert all(a.resources() == {"num_gpus": 0, "num_cpus": 1} for a in actors)
    # a node that declares no CPU still takes its actor (it asks for none)
    (zero,) = plan_actors([_node("n1", cpus=0)], tp=1, use_gpus=False)
    assert zero.resources() == {"num_gpus": 0, "num_cpus": 0}


def test_a_worker_count_keeps_the_first_slots_of_every_node() -> None:
    actors = plan_actors([_node("n1", 4), _node("n2", 4)], tp=1, use_gpus=True, count=3)
    assert [(a.index, a.node.host, a.slot) for a in actors] == [
        (0, "n1", 0), (1, "n2", 0), (2, "n1", 1),
    ]  # fmt: skip


def test_more_cpu_workers_than_nodes_split_the_nodes_cores() -> None:
    actors = plan_actors([_node("n1"), _node("n2")], tp=1, use_gpus=False, count=3)
    assert [(a.index, a.node.host, a.slot, a.node_slots) for a in actors] == [
        (0, "n1", 0, 2), (1, "n2", 0, 1), (2, "n1", 1, 2),
    ]  # fmt: skip


def test_the_worker_binds_to_the_gpus_ray_gave_its_actor() -> None:
    assert slot_of_gpus([2, 3], tp=2, node_slots=2, planned=0) == 1
    assert slot_of_gpus(["1"], tp=1, node_slots=4, planned=0) == 1
    # not one group of the plan (a cluster shared with other work): the planned slot
    assert slot_of_gpus([1, 2], tp=2, node_slots=2, planned=0) == 0
    assert slot_of_gpus([6, 7], tp=2, node_slots=2, planned=1) == 1
    assert slot_of_gpus([], tp=1, node_slots=1, planned=0) == 0
    assert slot_of_gpus(["GPU-uuid"], tp=1, node_slots=2, planned=1) == 1


def test_an_empty_cluster_is_an_error() -> None:
    with pytest.raises(HardwareError, match="no live node"):
        plan_actors([], tp=1, use_gpus=False)


def test_live_nodes_by_hpcinfer_label_dead_ones_left_out() -> None:
    infos: list[dict[str, Any]] = [
        {"NodeID": "b", "Alive": True, "NodeManagerAddress": "10.0.0.2",
         "NodeManagerHostname": "same", "Resources": {"CPU": 2.0, "GPU": 4.0},
         "Labels": {"hpcinfer-node": "h2"}},
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.1",
         "NodeManagerHostname": "same", "Resources": {"CPU": 2.0},
         "Labels": {"hpcinfer-node": "h1"}},
        {"NodeID": "c", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {}},
        {"NodeID": "d", "Alive": True, "NodeManagerAddress": "10.0.0.4",
         "NodeManagerHostname": "other", "Resources": {"CPU": 1.0}},
    ]  # fmt: skip
    nodes = ray_nodes(infos)
    assert [(n.node_id, n.host, n.gpus, n.cpus) for n in nodes] == [
        ("a", "h1", 0, 2), ("b", "h2", 4, 2), ("d", "other", 0, 1),
    ]  # fmt: skip


# -- which cluster ----------------------------------------------------------------------------


def _cluster_file(path: Path, address: str) -> Path:
    """A cluster file as `hpcinfer ray up` writes it."""
    record = RayClusterFile(
        name="x", address=address, head_host="h1", nodes=[], gpus_per_node=0,
        ports=ray_ports(27000), temp_root="/tmp/x", launcher="local", created_at=now_text(),
    )  # fmt: skip
    return save_cluster(record, path)


def test_the_cluster_file_gives_the_address(tmp_path: Path) -> None:
    path = _cluster_file(tmp_path / "c.json", "10.1.2.3:6380")
    found = cluster_address(str(path), env={"RAY_ADDRESS": "9.9.9.9:1"})
    assert (found.address, found.source, found.host_port) == (
        "10.1.2.3:6380", str(path), ("10.1.2.3", 6380)
    )  # fmt: skip


def test_ray_address_then_the_job_s_cluster_file(tmp_path: Path) -> None:
    assert cluster_address(None, env={"RAY_ADDRESS": "10.0.0.1:6379"}).address == "10.0.0.1:6379"
    _cluster_file(tmp_path / ".hpcinfer" / "ray" / "123.aurora.json", "10.0.0.8:7000")
    env = {"HOME": str(tmp_path), "PBS_JOBID": "123.aurora"}
    assert cluster_address(None, env=env).address == "10.0.0.8:7000"
    chosen = _cluster_file(tmp_path / "mine.json", "10.0.0.9:7000")
    # $HPCINFER_RAY_CLUSTER (set by a job script around `ray up`) beats $RAY_ADDRESS
    env = {"HPCINFER_RAY_CLUSTER": str(chosen), "RAY_ADDRESS": "10.0.0.1:6379"}
    assert cluster_address(None, env=env).address == "10.0.0.9:7000"


def test_a_missing_or_broken_cluster_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no Ray cluster file at .*nope.json.*hpcinfer ray up"):
        cluster_address(str(tmp_path / "nope.json"), env={})
    with pytest.raises(SpecError, match=r"local.json \(this job's cluster file\)"):
        cluster_address(None, env={"HOME": str(tmp_path)})
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(InputError, match=r"(?s)bad.json.*address: Field required"):
        cluster_address(str(bad), env={})
    with pytest.raises(SpecError, match="not HOST:PORT"):
        _ = ray_job.ClusterAddress("nohostport", "c.json").host_port


def test_a_cluster_that_does_not_answer_is_named_at_once() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: refused
        cluster = ray_job.ClusterAddress(f"127.0.0.1:{port}", "c.json")
        with pytest.raises(LaunchError, match=rf"127.0.0.1:{port} \(from c.json\).*ray status"):
            check_reachable(cluster)


def test_the_coordinator_listens_where_the_cluster_is_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HPCINFER_COORDINATOR_HOST", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as gcs:
        cluster = ray_job.ClusterAddress(f"127.0.0.1:{gcs.getsockname()[1]}", "c.json")
        assert check_reachable(cluster) == "127.0.0.1"
        monkeypatch.setenv("HPCINFER_COORDINATOR_HOST", "10.9.9.9")
        assert check_reachable(cluster) == "10.9.9.9"


def test_ray_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_job.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HardwareError, match=r"pip install 'hpcinfer\[ray\]'"):
        check_ray_installed()


def test_cli_refuses_before_anything_starts(main_cli: InProcessCLI, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    missing = tmp_path / "none.json"
    ran = main_cli("run", str(tmp_path / "p.txt"), "-o", str(tmp_path / "out"),
                   "--launcher", "ray", "--ray-cluster", str(missing))  # fmt: skip
    assert ran.code == 2 and "hpcinfer ray up" in ran.err and str(missing) in ran.err
    assert not (tmp_path / "out" / "units").exists()
    served = main_cli("serve", "--launcher", "ray")
    assert served.code == 2 and "--launcher ray is `hpcinfer run`'s" in served.err


# -- what an actor starts ---------------------------------------------------------------------


def test_each_actor_s_worker_is_its_index_with_its_own_log(tmp_path: Path) -> None:
    actors = plan_actors([_node("n1"), _node("n2")], tp=1, use_gpus=False)
    store = OutputStore(tmp_path)
    tasks = actor_tasks(actors, "{}", "10.0.0.1:5000", b"k" * 32, store)
    assert [(t.index, t.host, t.log) for t in tasks] == [
        (0, "n1", str(store.log_path(0))), (1, "n2", str(store.log_path(1))),
    ]  # fmt: skip
    # actor i joins as rank i with one slot: the coordinator numbers its worker i
    assert tasks[1].hello() == {"rank": 1, "slot": 0, "slots": 1, "host": "n2", "node_workers": 1}


def test_only_the_code_path_goes_to_the_actors() -> None:
    env = {"PYTHONPATH": "/src", "OPENAI_API_KEY": "secret", "HPCINFER_COORDINATOR_KEY": "k"}
    assert actor_env(env) == {"PYTHONPATH": "/src"}
    assert actor_env({}) == {}


def test_the_actor_s_worker_dials_the_coordinator_with_the_key_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: dict[str, Any] = {}

    def fake_spawn(argv: list[str], **kwargs: Any) -> str:
        started.update(argv=argv, **kwargs)
        return "child"

    monkeypatch.setattr(spawn, "spawn", fake_spawn)
    key = bytes(range(32))
    task = ActorTask(
        spec_json=JobSpec().model_dump_json(), index=2, host="h3", slot=0, node_slots=1,
        address="10.213.1.1:41000", key=key, log=str(tmp_path / "logs" / "worker-2.log"),
    )  # fmt: skip
    assert start_worker(task) == "child"
    assert started["argv"] == [sys.executable, "-m", "hpcinfer.run.worker",
                               "--connect", "10.213.1.1:41000"]  # fmt: skip
    assert key.hex() not in " ".join(started["argv"])
    env = started["env"]
    assert env[COORDINATOR_KEY_ENV] == key.hex()
    assert '"rank": 2' in env[WORKER_HELLO_ENV] and '"host": "h3"' in env[WORKER_HELLO_ENV]
    assert started["log"] == tmp_path / "logs" / "worker-2.log" and started["log"].parent.is_dir()
    assert started["death_signal"] is not None


# -- the coordinator waits only for actors that can still join --------------------------------


def test_join_listener_of_actors_counts_from_zero_and_forgets_dead_ones() -> None:
    joins = JoinListener("127.0.0.1", "127.0.0.1", world_size=4, wait_s=300, ranks=range(3))
    try:
        host, port = joins.address.rsplit(":", 1)
        first = Client((host, int(port)), authkey=joins.key)
        first.send(("hello", {"rank": 0, "slot": 0, "slots": 1, "host": "h1"}))
        wait_for(lambda: joins.missing_ranks() == [1, 2], 120, "actor 0 to join")
        assert [j.rank for j in joins.take()] == [0]
        assert joins.pending()
        joins.give_up(1)  # its actor ended before its worker joined
        assert joins.pending()  # actor 2 may still join
        joins.give_up(2)
        assert not joins.pending()
        assert joins.missing_ranks() == [1, 2]
        first.close()
    finally:
        joins.close()


def test_workers_joined_but_not_yet_taken_are_still_pending() -> None:
    """The coordinator of Ray actors runs no worker: between the last join and its doorbell
    nobody is alive, and the listener must still say workers are coming."""
    joins = JoinListener("127.0.0.1", "127.0.0.1", world_size=2, wait_s=300, ranks=range(1))
    try:
        host, port = joins.address.rsplit(":", 1)
        conn = Client((host, int(port)), authkey=joins.key)
        conn.send(("hello", {"rank": 0, "slot": 0, "slots": 1, "host": "h1"}))
        wait_for(lambda: joins.doorbell.poll(0.1), 120, "actor 0 to join")
        assert joins.missing_ranks() == [] and joins.pending()
        assert [j.rank for j in joins.take()] == [0]
        assert not joins.pending()
        conn.close()
    finally:
        joins.close()
