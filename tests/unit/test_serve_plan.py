"""Planning a node's servers: placement, ports (busy ones skipped), URLs, logs, refusals."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hpcinfer.cluster.allocation import RankInfo
from hpcinfer.errors import SpecError
from hpcinfer.serve.plan import advertised_url, check_reachable, plan_fleet
from hpcinfer.serve.ports import choose_port, port_in_use, server_ports
from hpcinfer.spec import JobSpec


def spec_for(tmp_path: Path, cores: int = 4, **serve: object) -> JobSpec:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    profile = tmp_path / "cpu4.yaml"
    profile.write_text(
        f"name: cpu{cores}\nvendor: cpu\ngpus_per_node: 0\ncores_per_node: {cores}\n"
    )
    return JobSpec.model_validate(
        {"model": str(model), "workers": {"profile": str(profile)}, "serve": serve}
    )


def test_ports_follow_local_rank_and_skip_busy_ones_without_collisions() -> None:
    busy = {8001}
    taken = server_ports("127.0.0.1", 8000, 2, in_use=lambda h, p: p in busy)
    assert [c.port for c in taken] == [8000, 8003]  # 8001 busy: next is 8001 + 2
    assert taken[1].note == "port 8001 in use; using 8003"
    rank1 = server_ports(
        "127.0.0.1", 8000, 2, local_rank=1, local_size=2, in_use=lambda h, p: False
    )
    assert [c.port for c in rank1] == [8002, 8003]
    # Two ranks of one node, each skipping: their progressions never meet.
    busy = {8000, 8002, 8004}
    r0 = server_ports("h", 8000, 1, local_rank=0, local_size=2, in_use=lambda h, p: p in busy)
    r1 = server_ports("h", 8000, 1, local_rank=1, local_size=2, in_use=lambda h, p: p in busy)
    assert r0[0].port == 8006 and r1[0].port == 8001


def test_a_really_listening_port_counts_as_busy() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        assert choose_port("127.0.0.1", port, 1).port != port
    assert not port_in_use("127.0.0.1", port)


def test_no_port_left_is_an_error_naming_the_fix() -> None:
    with pytest.raises(SpecError, match="pass another --port"):
        choose_port("h", 65535, 1, in_use=lambda h, p: True)
    with pytest.raises(SpecError, match="pass a lower --port"):
        server_ports("h", 65535, 4, in_use=lambda h, p: False)


def test_urls_name_the_node_for_a_wildcard_bind() -> None:
    assert advertised_url("0.0.0.0", 8000, "nid001") == "http://nid001:8000"
    assert advertised_url("10.1.2.3", 8001, "nid001") == "http://10.1.2.3:8001"
    assert advertised_url("::1", 8000) == "http://[::1]:8000"


def test_loopback_across_hosts_is_refused_with_the_fix() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(SpecError, match=r"--host 0\.0\.0\.0.*--api-key-env"):
            check_reachable(host, multi_host=True)
    check_reachable("127.0.0.1", multi_host=False)
    check_reachable("0.0.0.0", multi_host=True)


def test_plan_fleet_refuses_loopback_for_ranks_on_several_hosts(tmp_path: Path) -> None:
    two_hosts = RankInfo(rank=1, local_rank=0, world_size=2, local_size=1, launcher="mpi")
    with pytest.raises(SpecError, match="several hosts"):
        plan_fleet(spec_for(tmp_path), tmp_path, tmp_path / "endpoints.json", two_hosts, env={})


def test_plan_fleet_places_servers_with_ports_logs_and_bindings(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, servers=2, port=18000)
    fleet = plan_fleet(spec, tmp_path, tmp_path / "reg" / "endpoints.json", env={"PATH": "/bin"})
    launches = fleet.launches
    assert [x.devices for x in launches] == [("core0", "core1"), ("core2", "core3")]
    assert [x.url for x in launches] == ["http://127.0.0.1:18000", "http://127.0.0.1:18001"]
    assert [x.env["VLLM_CPU_OMP_THREADS_BIND"] for x in launches] == ["0-1", "2-3"]
    assert launches[0].cores == frozenset({0, 1})
    assert launches[0].log.parent == tmp_path / "reg" / "serve-logs"
    assert launches[1].log.name.endswith("-1.log")
    assert "--gpu-memory-utilization" in launches[0].argv
    assert launches[0].argv[launches[0].argv.index("--gpu-memory-utilization") + 1] == "0.15"
    assert fleet.registry == tmp_path / "reg" / "endpoints.json"


def test_two_ranks_on_one_node_split_it(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, cores=2, servers=1, port=18100, log_dir="logs")
    rank1 = RankInfo(rank=1, local_rank=1, world_size=2, local_size=2, launcher="mpi")
    fleet = plan_fleet(spec, tmp_path, tmp_path / "e.json", rank1, env={})
    (launch,) = fleet.launches
    assert launch.devices == ("core1",)
    assert launch.url == "http://127.0.0.1:18101"
    assert launch.rank == 1 and launch.index == 1
    assert launch.log.parent == tmp_path / "logs"


def test_tp8_on_a_12_tile_node_warns_about_idle_tiles(tmp_path: Path) -> None:
    spec = spec_for(tmp_path).model_copy(deep=True)
    spec.workers.profile = "aurora"
    spec.engine.tensor_parallel_size = 8
    fleet = plan_fleet(spec, tmp_path, tmp_path / "e.json", env={})
    (launch,) = fleet.launches
    assert len(launch.devices) == 8
    assert launch.env["ZE_AFFINITY_MASK"].count(",") == 7
    assert any("idle" in note for note in fleet.notes)
    assert "--enforce-eager" not in launch.argv


def test_an_open_bind_without_a_key_is_warned_about(tmp_path: Path) -> None:
    open_spec = spec_for(tmp_path, host="0.0.0.0", servers=1, port=18200)
    fleet = plan_fleet(open_spec, tmp_path, tmp_path / "e.json", env={})
    assert any("without an API key" in note for note in fleet.notes)
    assert fleet.launches[0].url.startswith("http://") and "0.0.0.0" not in fleet.launches[0].url
    keyed = spec_for(tmp_path, host="0.0.0.0", servers=1, port=18200, api_key_env="K")
    fleet = plan_fleet(keyed, tmp_path, tmp_path / "e.json", env={"K": "secret"})
    assert not any("API key" in note for note in fleet.notes)
    assert fleet.launches[0].env["VLLM_API_KEY"] == "secret"
    assert "secret" not in " ".join(fleet.launches[0].argv)


def test_default_server_count_one_per_gpu_group_one_per_cpu_node(tmp_path: Path) -> None:
    cpu = plan_fleet(spec_for(tmp_path, port=18300), tmp_path, tmp_path / "e.json", env={})
    assert [x.devices for x in cpu.launches] == [("core0", "core1", "core2", "core3")]
    gpu = spec_for(tmp_path, port=18300).model_copy(deep=True)
    gpu.workers.profile = "polaris"
    launches = plan_fleet(gpu, tmp_path, tmp_path / "e.json", env={}).launches
    assert [x.env["CUDA_VISIBLE_DEVICES"] for x in launches] == ["0", "1", "2", "3"]
    assert [x.url[-4:] for x in launches] == ["8300", "8301", "8302", "8303"]
