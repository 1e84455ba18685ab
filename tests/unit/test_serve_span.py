"""One server across nodes: its layout (or the refusal naming the numbers and the fix), the
command line and environment of each node's rank, and the failure paths of the mp backend
(a headless rank that dies, or goes silent, fails the server instead of hanging it)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.cluster.allocation import RankInfo
from hpcinfer.cluster.hardware import HardwareProfile
from hpcinfer.cluster.interfaces import NodeNetwork, interface_address, node_network
from hpcinfer.core.endpoints_registry import DEAD, FAILED, READY, read_registry
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import HardwareError, SpecError
from hpcinfer.serve import span_files as files
from hpcinfer.serve import span_node
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import Fleet
from hpcinfer.serve.layout import ServerLayout, check_allocation, plan_layout
from hpcinfer.serve.server_argv import SPAN_MODULE, ServerArgs, Span, server_argv
from hpcinfer.serve.span_node import PeerWatch, SpanRank, network_env
from hpcinfer.spec import EngineSpec, JobSpec, ServeSpec
from tests.harness import wait_for
from tests.unit.serve_fakes import fake_launch, outside_any_rank
from tests.unit.test_serve_endpoints import run_main

REG = Path("/nonexistent/endpoints.json")  # never written: these seats find their network
GPU8 = HardwareProfile(name="gpu8", vendor="nvidia", gpus_per_node=8)
CPU4 = HardwareProfile(name="cpu4", vendor="cpu", cores_per_node=4)


def job(tp: int = 1, **serve: Any) -> JobSpec:
    return JobSpec.model_validate({"engine": {"tensor_parallel_size": tp}, "serve": serve})


# --- layout -------------------------------------------------------------------------------


def test_a_server_spans_the_nodes_its_ranks_need() -> None:
    big = plan_layout(job(8, pipeline_parallel_size=2), GPU8, hosts=4)
    assert (big.nodes, big.ranks_per_node, big.world) == (2, 8, 16)
    assert big.groups(["n1", "n2", "n3", "n4"]) == [("n1", "n2"), ("n3", "n4")]
    assert [big.place_rank(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan_layout(job(4), GPU8, hosts=4).nodes == 1  # fits one node: as before
    # On CPU a node is one device group: with several hosts TP=2 puts a rank on each.
    assert plan_layout(job(2), CPU4, hosts=2).nodes == 2
    assert plan_layout(job(2), CPU4, hosts=1).nodes == 1  # one host: the server stays on it
    chosen = plan_layout(job(2, nodes_per_server=1), CPU4, hosts=2)
    assert chosen.nodes == 1 and not chosen.spans_nodes
    assert big.describe() == "TP=8 x PP=2 x DP=1 over 2 nodes (8 ranks per node)"


def test_layouts_that_cannot_fit_are_refused_naming_the_numbers_and_the_fix() -> None:
    with pytest.raises(SpecError) as odd:
        plan_layout(job(3, nodes_per_server=2), GPU8, hosts=2)
    assert "3 x 1 x 1 = 3 ranks do not divide over 2 nodes" in str(odd.value)
    assert "divisor of 3 (1, 3)" in str(odd.value)
    with pytest.raises(SpecError) as crowded:
        plan_layout(job(8, pipeline_parallel_size=2, nodes_per_server=1), GPU8, hosts=2)
    assert "put 16 on each node; gpu8 has 8 devices per node" in str(crowded.value)
    assert "--nodes-per-server 2" in str(crowded.value)
    with pytest.raises(SpecError, match="leave --servers unset"):
        plan_layout(job(8, pipeline_parallel_size=2, servers=2), GPU8, hosts=2)
    layout = plan_layout(job(8, pipeline_parallel_size=2), GPU8, hosts=3)
    with pytest.raises(SpecError) as short:
        check_allocation(layout, ["n1", "n2", "n3"])
    message = str(short.value)
    assert "allocation has 3 nodes (n1, n2, n3), not a multiple of 2" in message
    assert "e.g. 2" in message and "--nodes-per-server" in message
    check_allocation(layout, ["n1", "n2", "n3", "n4"])  # two whole servers


# --- command lines and environment ----------------------------------------------------------


def test_each_node_runs_vllm_serve_with_its_node_rank_and_the_followers_are_headless() -> None:
    args = ServerArgs("/m", "m", "0.0.0.0", 8000, on_cpu=True, ranks_on_node=1)
    serve = ServeSpec()
    leader = server_argv(
        args, EngineSpec(tensor_parallel_size=2), serve, "py", Span(2, 0, "10.0.0.1", 29500)
    )
    follower = server_argv(
        args, EngineSpec(tensor_parallel_size=2), serve, "py", Span(2, 1, "10.0.0.1", 29500)
    )
    assert leader[:3] == follower[:3] == ["py", "-m", SPAN_MODULE]
    for argv in (leader, follower):
        text = " ".join(argv)
        assert "--nnodes 2 --master-addr" not in text  # each flag with its own value
        assert argv[argv.index("--nnodes") + 1] == "2"
        assert argv[argv.index("--master-addr") + 1] == "10.0.0.1"
        assert argv[argv.index("--master-port") + 1] == "29500"
        assert argv[argv.index("--distributed-executor-backend") + 1] == "mp"
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert leader[leader.index("--node-rank") + 1] == "0" and "--headless" not in leader
    assert leader[leader.index("--port") + 1] == "8000"
    assert follower[follower.index("--node-rank") + 1] == "1" and "--headless" in follower
    assert "--port" not in follower  # a headless rank serves no API
    # KV cache on CPU: split over this node's ranks (1), not the whole TP group.
    assert leader[leader.index("--gpu-memory-utilization") + 1] == "0.3"


def test_pipeline_data_and_expert_parallelism_and_the_ray_backend_are_rendered() -> None:
    args = ServerArgs("/m", "m", "0.0.0.0", 8000, on_cpu=False)
    serve = ServeSpec(
        pipeline_parallel_size=2, data_parallel_size=2, expert_parallel=True, backend="ray"
    )
    argv = server_argv(args, EngineSpec(tensor_parallel_size=8), serve, "py")
    assert argv[:3] == ["py", "-m", SPAN_MODULE]
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert "--enable-expert-parallel" in argv
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert "--nnodes" not in argv  # Ray places the ranks itself
    dp = server_argv(
        args,
        EngineSpec(),
        ServeSpec(data_parallel_size=2),
        "py",
        Span(2, 1, "10.0.0.1", 29500, dp_rpc_port=29600),
    )
    assert dp[dp.index("--data-parallel-address") + 1] == "10.0.0.1"
    assert dp[dp.index("--data-parallel-rpc-port") + 1] == "29600"
    plain = server_argv(args, EngineSpec(), ServeSpec(), "py")
    assert "--pipeline-parallel-size" not in plain and "--distributed-executor-backend" not in plain


def test_the_network_environment_comes_from_the_chosen_interface() -> None:
    assert interface_address("lo") == "127.0.0.1"
    loopback = node_network("lo")
    assert loopback == NodeNetwork("127.0.0.1", "lo")
    env = network_env(loopback, "10.0.0.1")
    assert env == {
        "VLLM_HOST_IP": "127.0.0.1",
        "MASTER_ADDR": "10.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }
    with pytest.raises(HardwareError, match=r"--interface no-such-if0: .* has no such .*\(it has"):
        node_network("no-such-if0")


# --- the ranks' shared files and the leader's watch ------------------------------------------


def seat(server: int = 0, node_rank: int = 0, started_at: float | None = None) -> SpanRank:
    layout = ServerLayout(2, 1, 1, False, nodes=2, backend="mp")
    return SpanRank(
        layout,
        rank=server * 2 + node_rank,
        server=server,
        node_rank=node_rank,
        node="h1",
        network=NodeNetwork("127.0.0.1", "lo"),
        started_at=time.time() if started_at is None else started_at,
        launch="L1",
    )


def member(state: str = files.RUNNING, beat: int = 1, launch: str = "L1") -> files.MemberState:
    return files.MemberState(
        server=0, node_rank=1, rank=1, node="h2", address="10.0.0.2", devices=["core0"],
        state=state, error="exited with code 1" if state == DEAD else None, beat=beat,
        log="/logs/h2.log", launch=launch,
    )  # fmt: skip


def test_files_of_an_earlier_launch_are_not_taken_for_this_ones(tmp_path: Path) -> None:
    registry = tmp_path / "endpoints.json"
    files.write_member(registry, member(launch="L0"))
    watch = PeerWatch(registry, seat())
    assert watch.read(1) is None and watch() is None
    files.write_member(registry, member())
    found = watch.read(1)
    assert found is not None and found.node == "h2"
    # Without a launch id, the time it was written decides.
    stale = files.MemberState(**{**member().__dict__, "launch": None})
    files.write_member(registry, stale)
    assert files.read_member(registry, 0, 1, None, time.time() + 2 * files.SKEW_S) is None
    assert files.read_member(registry, 0, 1, None, time.time()) is not None


def test_the_launch_id_comes_from_the_schedulers_job_step_or_application() -> None:
    assert files.launch_id({"HPCINFER_LAUNCH_ID": "L9", "SLURM_JOB_ID": "5"}) == "L9"
    slurm = files.launch_id({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "2"})
    next_step = files.launch_id({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "3"})
    assert slurm is not None and slurm != next_step
    pals = files.launch_id({"PBS_JOBID": "7.aurora", "PALS_APID": "a1"})
    assert pals is not None and "7.aurora" in pals and "a1" in pals
    assert files.launch_id({"PMIX_NAMESPACE": "prterun-x-1@1"}) is not None
    # A PBS job id alone is the same for every mpiexec of the job: no launch id (the
    # rendezvous handshake tells launches apart).
    assert files.launch_id({"PBS_JOBID": "7.aurora"}) is None


def test_a_follower_that_read_an_earlier_launchs_rendezvous_joins_this_ones(
    tmp_path: Path,
) -> None:
    """No launch id, and a relaunch within the clock-skew margin: the earlier launch's
    rendezvous looks fresh. The follower may read it, but only starts once this launch's
    first node (its nonce) takes its token in, and then at this launch's address."""
    from dataclasses import replace

    registry = tmp_path / "endpoints.json"
    old = files.Rendezvous(
        server=0, node="h1", address="10.0.0.1", master_port=1111, dp_rpc_port=None,
        leader_rank=0, part=str(tmp_path / "p.json"), nonce="old", accepted={"1": "their-token"},
    )  # fmt: skip
    files.write_rendezvous(registry, old)
    leader = replace(seat(), launch=None)
    follower = replace(seat(node_rank=1), launch=None, node="h2")
    found = files.read_rendezvous(registry, 0, None, follower.started_at)
    assert found is not None and found.nonce == "old"  # stale, yet fresh by the clock
    state = files.MemberState(
        server=0, node_rank=1, rank=1, node="h2", address="10.0.0.2", devices=["core0"],
        nonce=found.nonce,
    )  # fmt: skip
    assert not old.accepts(state)  # the earlier launch listed its own member's token
    beat = span_node._Heartbeat(registry, state, threading.Lock(), threading.Event())
    beat.update()
    # This launch's first node does not take a member echoing another nonce.
    assert files.read_member(registry, 0, 1, None, leader.started_at, "new") is None

    joined: list[files.Rendezvous] = []
    stop = StopSignal()
    thread = threading.Thread(
        target=lambda: joined.append(
            span_node.await_acceptance(registry, follower, beat, time.monotonic() + 60, stop)
        )
    )
    thread.start()
    try:
        new = replace(old, address="10.0.0.9", master_port=2222, nonce="new", accepted={})
        files.write_rendezvous(registry, new)
        (member,) = span_node.await_members(registry, leader, time.monotonic() + 60, stop, "new")
        assert member.token == state.token
        files.write_rendezvous(registry, replace(new, accepted={"1": member.token}))
        thread.join(timeout=60)
    finally:
        stop.drain("test over")
        thread.join(timeout=10)
    assert [(r.address, r.master_port) for r in joined] == [("10.0.0.9", 2222)]


def test_the_leader_sees_a_dead_or_silent_headless_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "endpoints.json"
    watch = PeerWatch(registry, seat())
    files.write_member(registry, member(beat=1))
    assert watch() is None
    files.write_member(registry, member(state=DEAD, beat=2))
    why = watch()
    assert why is not None
    assert "node rank 1 (h2, serve rank 1) headless vLLM dead: exited with code 1" in why
    assert "/logs/h2.log" in why
    monkeypatch.setattr(span_node, "SILENT_AFTER_S", 0.3)
    quiet = PeerWatch(registry, seat())
    files.write_member(registry, member(beat=5))
    assert quiet() is None
    wait_for(lambda: quiet() is not None, 5, "the silent node noticed")
    assert "silent for" in (quiet() or "")


def test_a_peer_that_fails_fails_a_starting_server_and_kills_a_serving_one(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "endpoints.json"
    gate = tmp_path / "gate"
    launch, _ = fake_launch(tmp_path, 0, env={"PATH": "/usr/bin:/bin", "FAKE_GATE": str(gate)})
    peer_error: list[str] = []

    def peers() -> str | None:
        return peer_error[0] if peer_error else None

    nodes = ({"node": "h1", "node_rank": 0}, {"node": "h2", "node_rank": 1})
    starting = launch.__class__(
        **{**launch.__dict__, "peers": peers, "verify": True, "nodes": nodes}
    )
    with Fleet([starting], registry, ready_timeout_s=600) as fleet:
        fleet.start()
        peer_error.append("node rank 1 (h2) headless vLLM dead: exited with code 1")
        began = time.monotonic()
        with pytest.raises(Exception, match="no server became ready"):
            fleet.wait_ready()
        assert time.monotonic() - began < 30  # not the 600 s ready timeout
        (entry,) = read_registry(registry)
        assert entry.state == FAILED and "h2" in (entry.error or "")
        assert [n["node"] for n in entry.nodes] == ["h1", "h2"]

    peer_error.clear()
    gate.touch()
    registry2 = tmp_path / "endpoints2.json"
    with Fleet([starting], registry2, ready_timeout_s=60, monitor_interval_s=0.2) as fleet:
        fleet.start()
        (ready,) = fleet.wait_ready()
        assert ready.state == READY
        assert ready.verified is not None and ready.verified["text"] == " Paris, m"
        fleet.start_monitor()
        peer_error.append("node rank 1 (h2) silent for 46s")
        wait_for(lambda: fleet.all_down(), 20, "the server marked dead")
        (entry,) = read_registry(registry2)
        assert entry.state == DEAD and "silent" in (entry.error or "")
        process = fleet._servers[0].process
        assert process is not None
        wait_for(lambda: not process.alive(), 20, "the server's process killed")


def test_a_node_that_fails_before_joining_fails_its_server_at_once_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network on a follower: its FAILED state reaches the leader, which fails the
    server now (naming the node and the reason), not after the ready timeout."""
    registry = tmp_path / "endpoints.json"
    monkeypatch.setenv("HPCINFER_LAUNCH_ID", "L1")
    layout = ServerLayout(2, 1, 1, False, nodes=2, backend="mp")
    spec = job(interface="no-such-if0")
    with pytest.raises(HardwareError, match="no-such-if0"):
        span_node.span_rank(spec, layout, RankInfo(1, 0, 2, 1, "hpcinfer"), registry)
    began = time.monotonic()
    with pytest.raises(ServeError) as caught:
        span_node.await_members(registry, seat(), began + 600, StopSignal())
    assert time.monotonic() - began < 30
    message = str(caught.value)
    assert "node rank 1" in message and "failed before the server started" in message
    assert "no-such-if0" in message


def test_a_follower_needs_no_api_key_and_reports_why_it_gave_up(tmp_path: Path) -> None:
    """The key is not forwarded to other nodes (a headless rank serves no API): a follower
    without it still joins; one that gives up writes why, for its leader to report."""
    registry = tmp_path / "endpoints.json"
    spec = job(api_key_env="HPCINFER_TEST_NO_SUCH_KEY")
    stop = StopSignal()
    stop.drain("test")
    follower = seat(node_rank=1)
    with pytest.raises(ServeError, match="stopped before its first node published"):
        span_node.run_follower(spec, tmp_path, registry, follower, stop, print, env={})
    state = files.read_member(registry, 0, 1, "L1", time.time())
    assert state is not None and state.state == FAILED
    assert "stopped before its first node published" in (state.error or "")


# --- refused before anything starts ---------------------------------------------------------


def test_cli_refuses_a_spanning_server_without_ranks_or_with_a_partial_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    outside_any_rank(tmp_path, monkeypatch)
    (tmp_path / "cpu.yaml").write_text(
        "name: c2\nvendor: cpu\ngpus_per_node: 0\ncores_per_node: 2\n"
    )
    code, out = run_main(
        ["serve", "--tp", "2", "--nodes-per-server", "2", "--profile", "cpu.yaml"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "needs one serve rank per node: pass --launcher" in out
    (tmp_path / "hosts").write_text("h1\nh2\nh3\n")
    ssh = ["--launcher", "ssh", "--hostfile", "hosts", "--host", "0.0.0.0"]
    code, out = run_main(["serve", "--tp", "2", *ssh, "--profile", "cpu.yaml"], monkeypatch, capsys)
    assert code == 2, out
    assert "allocation has 3 nodes (h1, h2, h3), not a multiple of 2" in out
    assert not (tmp_path / "serve-logs").exists()  # nothing started: the registry says why
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == FAILED and "not a multiple of 2" in (entry.error or "")
    code, out = run_main(["serve", "--tp", "3", "--nodes-per-server", "2"], monkeypatch, capsys)
    assert code == 2 and "do not divide over 2 nodes" in out


def test_the_registry_keeps_its_format_and_the_dispatcher_reads_a_spanning_server(
    tmp_path: Path,
) -> None:
    from hpcinfer.core.endpoints_registry import Endpoint, write_registry
    from hpcinfer.engines.targets import resolve_targets

    nodes = [
        {"node": "h1", "address": "10.0.0.1", "node_rank": 0, "rank": 0, "devices": ["gpu0"]},
        {"node": "h2", "address": "10.0.0.2", "node_rank": 1, "rank": 1, "devices": ["gpu0"]},
    ]
    entry = Endpoint(
        url="http://10.0.0.1:8000", model="m", node="h1", devices=["h1:gpu0", "h2:gpu0"],
        state=READY, nodes=nodes, verified={"prompt": "p", "text": " t", "latency_s": 0.1},
    )  # fmt: skip
    registry = tmp_path / "endpoints.json"
    write_registry(registry, [entry])
    document = json.loads(registry.read_text())
    assert document["version"] == 1  # the same format, two more fields
    (read,) = read_registry(registry)
    assert read.spans_nodes and read.nodes == nodes and read.verified == entry.verified
    spec = JobSpec.model_validate(
        {"engine": {"kind": "openai"}, "client": {"registry": str(registry)}}
    )
    targets = resolve_targets(spec, tmp_path)
    assert [t.url for t in targets.endpoints] == ["http://10.0.0.1:8000"]
    # A registry written before these fields reads as servers on one node each.
    registry.write_text(json.dumps({"endpoints": [{"url": "http://a:1", "model": "m"}]}))
    (old,) = read_registry(registry)
    assert old.nodes == [] and old.verified is None and not old.spans_nodes


def test_four_nodes_at_two_per_server_are_two_servers_each_led_by_its_first_node() -> None:

    spec = job(2, interface="lo")
    layout = ServerLayout(2, 1, 1, False, nodes=2, backend="mp")
    seats = [
        span_node.span_rank(spec, layout, RankInfo(r, 0, 4, 1, "hpcinfer"), REG) for r in range(4)
    ]
    assert [(s.server, s.node_rank, s.leader_rank) for s in seats] == [
        (0, 0, 0), (0, 1, 0), (1, 0, 2), (1, 1, 2),
    ]  # fmt: skip
    assert all(s.network == NodeNetwork("127.0.0.1", "lo") for s in seats)
    with pytest.raises(SpecError, match="one serve rank per node"):
        span_node.span_rank(spec, layout, RankInfo(0, 0, 4, 2, "mpich"), REG)
    with pytest.raises(SpecError, match=r"3 serve ranks .* do not make whole servers of 2"):
        span_node.span_rank(spec, layout, RankInfo(0, 0, 3, 1, "mpich"), REG)


def test_the_live_clusters_node_list_names_what_a_ray_layout_lacks() -> None:
    from types import SimpleNamespace

    from hpcinfer.serve.ray_backend import missing_resources

    layout = ServerLayout(8, 2, 1, False, nodes=2, backend="ray")
    groups = [("h1", "h2"), ("h3", "h4")]

    def node(host: str, gpus: float, alive: bool = True) -> SimpleNamespace:
        return SimpleNamespace(host=host, gpus=gpus, alive=alive)

    full = [node(h, 8) for h in ("h1", "h2", "h3", "h4")]
    assert missing_resources(layout, groups, full) is None
    short = [node("h1", 8), node("h2", 4), node("h3", 8, alive=False)]
    why = missing_resources(layout, groups, short)
    assert why == (
        "2 servers of TP=8 x PP=2 x DP=1 over 2 nodes (8 ranks per node) each need 16 GPUs in "
        "2 nodes of 8; the cluster has h2 with 4, h3 dead, h4 not joined"
    )
    one = missing_resources(layout, groups[:1], [node("h1", 8), node("h2", 4)])
    assert one is not None and one.endswith(
        "needs 16 GPUs in 2 nodes of 8; the cluster has h2 with 4"
    )


def ray_cluster_file(tmp_path: Path, first_address: str, gpus: int = 4) -> Any:
    from hpcinfer.raycluster.cluster_file import RayClusterFile, RayNodeRecord
    from hpcinfer.raycluster.ports import ray_ports

    nodes = [
        RayNodeRecord(host=h, address=a, gpus=gpus, cpus=8, temp_dir=str(tmp_path / h))
        for h, a in (("h1", first_address), ("h2", "10.9.9.2"))
    ]
    return RayClusterFile(
        name="c1", address=f"{first_address}:26000", head_host="h1", nodes=nodes,
        gpus_per_node=gpus, ports=ray_ports(26000), temp_root=str(tmp_path), launcher="ssh",
        created_at="2026-12-05T10:00:00+00:00",
    )  # fmt: skip


def test_a_ray_server_runs_vllm_with_the_ray_backend_on_its_first_node(tmp_path: Path) -> None:
    from hpcinfer.serve.ray_backend import plan_ray_server, ray_layout

    here = node_network(None).address
    cluster = ray_cluster_file(tmp_path, here)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    spec = JobSpec.model_validate(
        {
            "model": str(model),
            "engine": {"tensor_parallel_size": 4},
            "serve": {"backend": "ray", "pipeline_parallel_size": 2, "host": "0.0.0.0"},
        }
    )
    layout, groups = ray_layout(spec, cluster)
    assert (layout.nodes, layout.ranks_per_node, groups) == (2, 4, [("h1", "h2")])
    registry = tmp_path / "endpoints.json"
    fleet = plan_ray_server(spec, tmp_path, registry, cluster, layout, 0, write_to=registry)
    (launch,) = fleet.launches
    argv = launch.argv
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert "--nnodes" not in argv and "--headless" not in argv
    assert launch.env["RAY_ADDRESS"] == cluster.address
    assert launch.env["VLLM_HOST_IP"] == here
    assert launch.url.startswith(f"http://{here}:")
    assert [n["node"] for n in launch.nodes] == ["h1", "h2"]
    assert [n["address"] for n in launch.nodes] == [here, "10.9.9.2"]
    assert launch.devices[:1] == ("h1:gpu0",) and len(launch.devices) == 8 and launch.verify
    elsewhere = ray_cluster_file(tmp_path, "10.9.9.1")
    with pytest.raises(SpecError, match=r"runs on its first node, h1 \(10\.9\.9\.1\)"):
        plan_ray_server(spec, tmp_path, registry, elsewhere, layout, 0, write_to=registry)
    with pytest.raises(SpecError, match="declares no GPUs"):
        ray_layout(spec, ray_cluster_file(tmp_path, here, gpus=0))


def test_a_stop_reaches_every_rank_through_the_stop_file_before_the_launchers(
    tmp_path: Path,
) -> None:
    from hpcinfer.serve.stop_file import relay_to_ranks, requested, stop_path, watch_for_stop

    registry = tmp_path / "endpoints.json"
    stop_path(registry).write_text("an-earlier-launch\n")
    rank_stop, other_stop = StopSignal(), StopSignal()
    watching = [
        watch_for_stop(registry, "L1", rank_stop),
        watch_for_stop(registry, "L0", other_stop),
    ]
    stop = StopSignal()
    with relay_to_ranks(registry, "L1", stop, grace_s=1.0) as launchers:
        assert not requested(registry, "L1")
        stop.drain("SIGTERM")
        wait_for(lambda: rank_stop.requested, 10, "the rank told through the stop file")
        assert not launchers.requested  # the ranks get their grace period first
        assert not other_stop.requested  # another launch's ranks are not stopped
        wait_for(lambda: launchers.requested, 10, "the launchers signalled after the grace")
    assert not stop_path(registry).exists()
    for event in watching:
        event.set()


def test_ray_servers_take_their_first_nodes_rank_and_need_ranks_when_several() -> None:
    from hpcinfer.serve.ray_backend import ray_seat

    layout = ServerLayout(8, 2, 1, False, nodes=2, backend="ray")
    two = [("h1", "h2"), ("h3", "h4")]
    assert ray_seat(layout, two[:1], None) == (0, 0)  # one server: its driver runs here
    with pytest.raises(SpecError, match=r"2 servers .* pass --launcher ssh\|mpi\|srun"):
        ray_seat(layout, two, None)
    seats = [ray_seat(layout, two, RankInfo(r, 0, 4, 1, "hpcinfer")) for r in range(4)]
    assert seats == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(SpecError, match="3 serve ranks"):
        ray_seat(layout, two, RankInfo(0, 0, 3, 1, "hpcinfer"))


def test_a_failed_rank_of_a_spanning_server_stops_the_launchs_other_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ssh nothing ends the other ranks when one fails: the launch tells them through
    the stop file, as a stop request would (mpiexec ends its job by itself)."""
    from hpcinfer.serve import launch as serve_launch
    from hpcinfer.serve.stop_file import requested

    outside_any_rank(tmp_path, monkeypatch)
    # after the grace in which the server's first node would record a dead follower itself
    monkeypatch.setattr(serve_launch, "FAILED_RANK_GRACE_S", 0.2)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1\nh2\n")
    seen: list[bool] = []

    def ranks(*args: Any) -> int:
        on_failure = args[-1]
        assert on_failure is not None
        on_failure("rank 1 exited with code 1")
        launch = serve_launch.os.environ["HPCINFER_LAUNCH_ID"]
        wait_for(lambda: requested(tmp_path / "endpoints.json", launch), 10, "the stop file")
        seen.append(True)
        return 1

    monkeypatch.setattr(serve_launch, "launch_self", ranks)
    monkeypatch.setenv("HPCINFER_LAUNCH_ID", "")
    spec = job(2, host="0.0.0.0", nodes_per_server=2, registry=str(tmp_path / "endpoints.json"))
    assert serve_launch.launch_serve_ranks(spec, "ssh", ["serve"], hostfile) == 1
    assert seen == [True]


def test_a_gpu_less_head_runs_the_driver_and_its_gpu_nodes_the_ranks(tmp_path: Path) -> None:
    """A cluster of one's own: `ray up --head-gpus 0` makes the control node a head without
    GPUs; a TP=2 server spans the two GPU nodes, its API process on the head."""
    from hpcinfer.raycluster.cluster_file import RayClusterFile, RayNodeRecord
    from hpcinfer.raycluster.ports import ray_ports
    from hpcinfer.serve.ray_backend import plan_ray_server, ray_layout

    here = node_network(None).address
    nodes = [
        RayNodeRecord(host=h, address=a, gpus=g, cpus=8, temp_dir=str(tmp_path / h))
        for h, a, g in (("control", here, 0), ("c0", "10.9.9.2", 1), ("c1", "10.9.9.3", 1))
    ]
    cluster = RayClusterFile(
        name="own", address=f"{here}:26000", head_host="control", nodes=nodes,
        gpus_per_node=1, head_gpus=0, ports=ray_ports(26000), temp_root=str(tmp_path),
        launcher="ssh", created_at="2026-12-05T10:00:00+00:00",
    )  # fmt: skip
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    spec = JobSpec.model_validate(
        {"model": str(model), "engine": {"tensor_parallel_size": 2}, "serve": {"backend": "ray"}}
    )
    layout, groups = ray_layout(spec, cluster)
    assert (layout.nodes, layout.ranks_per_node, groups) == (2, 1, [("c0", "c1")])
    registry = tmp_path / "endpoints.json"
    fleet = plan_ray_server(spec, tmp_path, registry, cluster, layout, 0, write_to=registry)
    (launch,) = fleet.launches
    assert launch.node == "control"
    assert launch.argv[launch.argv.index("--tensor-parallel-size") + 1] == "2"
    assert launch.devices == ("c0:gpu0", "c1:gpu0")
    assert launch.env["RAY_ADDRESS"] == cluster.address
    elsewhere = cluster.model_copy(
        update={"nodes": [nodes[0].model_copy(update={"address": "10.9.9.1"}), *nodes[1:]]}
    )
    with pytest.raises(SpecError, match=r"runs on the cluster's head, control \(10\.9\.9\.1\)"):
        plan_ray_server(spec, tmp_path, registry, elsewhere, layout, 0, write_to=registry)
