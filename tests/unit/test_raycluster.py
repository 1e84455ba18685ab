"""The pure parts of `hpcinfer ray up|status|down`: ports, layout, the `ray start` command
line, fingerprints, readiness decisions from fake node lists, the cluster file, the
launch commands."""

from __future__ import annotations

import itertools
import json
import shlex
import signal
import sys
from pathlib import Path

import pytest

from hpcinfer.errors import HardwareError, InputError, RayClusterError, SpecError
from hpcinfer.raycluster import fingerprint as fp
from hpcinfer.raycluster.cluster_file import (
    RayClusterFile,
    RayNodeRecord,
    create_cluster,
    default_cluster_file,
    default_cluster_name,
    load_cluster,
    save_cluster,
)
from hpcinfer.raycluster.down import ray_down
from hpcinfer.raycluster.gcs import LiveNode, split_address
from hpcinfer.raycluster.launching import RECORD_PREFIX, node_launches
from hpcinfer.raycluster.layout import SOCKET_PATH_MAX, cluster_root, node_temp_dir
from hpcinfer.raycluster.node import RAY_START_TIMEOUT_S, which_host
from hpcinfer.raycluster.node_processes import names_dir, write_node_record
from hpcinfer.raycluster.ports import BLOCK, FIRST_BASE, LAST_BASE, port_base_for, ray_ports
from hpcinfer.raycluster.readiness import ExpectedNode, assess
from hpcinfer.raycluster.request import down_hint, resolve_up_request
from hpcinfer.raycluster.start_argv import NodeStart, ray_start_argv, shown
from hpcinfer.raycluster.up import (
    UpRequest,
    _node_start_argv,
    _starting_record,
    expected_nodes,
    settle_s,
)

FINGERPRINT = {"python": "3.11.7", "ray": "2.60.0", "vllm": "0.32.0", "torch": "2.13.0-cpu"}


# --- ports ---------------------------------------------------------------------------------


def test_every_port_is_distinct_and_inside_the_block() -> None:
    ports = ray_ports(26800)
    named = list(ports.named().values())
    assert len(set(named)) == len(named) == 9
    workers = range(ports.min_worker, ports.max_worker + 1)
    assert not set(named) & set(workers)
    assert all(26800 <= p < 26800 + BLOCK for p in [*named, ports.max_worker])


def test_the_base_comes_from_the_name_stable_and_below_the_ephemeral_range() -> None:
    bases = {port_base_for(f"job{i}") for i in range(200)}
    assert port_base_for("job1") == port_base_for("job1")
    assert len(bases) > 30  # names spread over the blocks
    assert all(FIRST_BASE <= b <= LAST_BASE and (b - FIRST_BASE) % BLOCK == 0 for b in bases)
    assert all(b + BLOCK <= 32768 for b in bases)


@pytest.mark.parametrize("base", [80, 65500])
def test_a_base_whose_block_leaves_the_port_range_is_refused(base: int) -> None:
    with pytest.raises(SpecError, match="--port-base"):
        ray_ports(base)


# --- layout --------------------------------------------------------------------------------


def test_the_temp_root_is_short_and_differs_by_user_and_name() -> None:
    root = cluster_root("job1", uid=1000)
    assert root == cluster_root("job1", uid=1000)
    assert root != cluster_root("job2", uid=1000) != cluster_root("job1", uid=1001)
    assert len(root.name) == len("hpcinfer-ray-") + 8


def test_each_node_has_its_own_folder_named_after_its_host() -> None:
    root = cluster_root("job1", uid=0)
    assert node_temp_dir(root, "x1000c0s0b0n0.hostmgmt.cm.aurora.alcf.anl.gov").name == (
        "x1000c0s0b0n0"
    )
    assert node_temp_dir(root, "h1") != node_temp_dir(root, "h2")
    assert node_temp_dir(root, "user@h$1").name == "user_h_1"
    long_names = [f"gpu-node-rack12-{i:03d}" for i in range(3)]
    folders = {node_temp_dir(root, name) for name in long_names}
    assert len(folders) == 3
    for folder in folders:
        session = folder / "session_2026-12-05_10-34-39_389333_4194304"
        assert len(str(session / "sockets" / "plasma_store")) <= SOCKET_PATH_MAX


def test_a_temp_parent_too_long_for_rays_sockets_is_refused() -> None:
    root = cluster_root("job1", uid=0, parent=Path("/" + "p" * 30))
    with pytest.raises(SpecError, match="107 bytes"):
        node_temp_dir(root, "h1")


# --- ray start -----------------------------------------------------------------------------


def _start(head_address: str | None = None, cpus: int | None = None) -> NodeStart:
    return NodeStart(
        ray="/venv/bin/ray",
        address="10.0.0.1",
        temp_dir=Path("/tmp/hpcinfer-ray-abcd1234/h1"),
        ports=ray_ports(26800),
        labels=fp.node_labels("h1", "job1", FINGERPRINT),
        gpus=4,
        cpus=cpus,
        head_address=head_address,
    )


def _options(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_the_head_is_given_every_port_and_no_dashboard() -> None:
    argv = ray_start_argv(_start())
    opts = _options(argv)
    assert argv[:3] == ["/venv/bin/ray", "start", "--head"]
    for option, port in {
        "port": 26800,
        "node-manager-port": 26801,
        "object-manager-port": 26802,
        "ray-client-server-port": 26803,
        "dashboard-port": 26804,
        "dashboard-agent-listen-port": 26805,
        "dashboard-agent-grpc-port": 26806,
        "runtime-env-agent-port": 26807,
        "metrics-export-port": 26808,
        "min-worker-port": 26820,
        "max-worker-port": 26999,
    }.items():
        assert opts[option] == str(port), option
    assert opts["include-dashboard"] == "false"
    assert opts["node-ip-address"] == "10.0.0.1"
    assert opts["temp-dir"] == "/tmp/hpcinfer-ray-abcd1234/h1"
    assert opts["num-gpus"] == "4" and "num-cpus" not in opts
    assert "--disable-usage-stats" in argv
    labels = json.loads(opts["labels"])
    assert labels["hpcinfer-node"] == "h1" and labels["hpcinfer-cluster"] == "job1"
    assert labels["hpcinfer-ray"] == "2.60.0"


def test_a_worker_joins_the_head_without_head_only_options() -> None:
    argv = ray_start_argv(_start("10.0.0.9:26800", cpus=8))
    opts = _options(argv)
    assert "--head" not in argv and opts["address"] == "10.0.0.9:26800"
    assert not {"port", "ray-client-server-port", "dashboard-port"} & set(opts)
    assert opts["node-manager-port"] == "26801" and opts["num-cpus"] == "8"


def test_the_shown_command_is_quoted_for_a_shell() -> None:
    argv = ray_start_argv(_start())
    assert shlex.split(shown(argv)) == argv
    assert "'--labels={" in shown(argv)


# --- fingerprint ---------------------------------------------------------------------------


def test_versions_become_ray_label_values() -> None:
    assert fp.label_value("2.13.0+cpu") == "2.13.0-cpu"
    assert fp.label_value("") == "none"
    assert len(fp.label_value("1" * 100)) == 63


def test_the_measured_fingerprint_reads_installed_versions() -> None:
    found = fp.measured_fingerprint()
    assert set(found) == set(fp.KEYS)
    assert found["python"] == fp.label_value(".".join(map(str, sys.version_info[:3])))


def test_the_environment_replaces_measured_versions_key_by_key() -> None:
    found = fp.node_fingerprint({fp.FINGERPRINT_ENV: "ray=0.0.1, vllm=9.9+x"})
    assert found["ray"] == "0.0.1" and found["vllm"] == "9.9-x"
    assert found["python"] == fp.measured_fingerprint()["python"]


@pytest.mark.parametrize("text", ["ray", "cuda=12", "ray="])
def test_a_bad_fingerprint_override_is_refused_naming_the_keys(text: str) -> None:
    with pytest.raises(SpecError, match="python, ray, vllm, torch"):
        fp.parse_override(text)


def test_differences_name_each_version_and_the_heads() -> None:
    other = FINGERPRINT | {"ray": "2.59.0"}
    assert fp.differences(FINGERPRINT, other) == ["ray 2.59.0 (head: 2.60.0)"]
    assert fp.differences(FINGERPRINT, dict(FINGERPRINT)) == []


# --- readiness -----------------------------------------------------------------------------


def _node(
    host: str,
    *,
    gpus: float = 2,
    alive: bool = True,
    cluster: str = "job1",
    versions: dict[str, str] | None = None,
    cpus: float = 1,
) -> LiveNode:
    labels = fp.node_labels(host, cluster, versions or FINGERPRINT)
    return LiveNode(
        node_id=f"id-{host}-{alive}",
        host=host,
        cluster=cluster,
        address=f"10.0.0.{host[-1]}",
        node_manager_port=26801,
        alive=alive,
        head=host == "h1",
        resources={"GPU": gpus, "CPU": cpus},
        labels=labels,
    )


EXPECTED = [ExpectedNode("h1", 2), ExpectedNode("h2", 2), ExpectedNode("h3", 2)]


def test_every_host_joined_with_its_gpus_and_versions_is_ready() -> None:
    assert assess(EXPECTED, [_node("h1"), _node("h2"), _node("h3")], "job1") == []


def test_a_host_that_has_not_joined_is_named() -> None:
    problems = assess(EXPECTED, [_node("h1"), _node("h3")], "job1")
    assert [str(p) for p in problems] == ["h2: not joined"]
    assert not problems[0].final


def test_a_dead_node_is_named_as_dead() -> None:
    problems = assess(EXPECTED, [_node("h1"), _node("h2", alive=False), _node("h3")], "job1")
    assert [(p.host, p.what.split(" ")[0]) for p in problems] == [("h2", "dead")]


def test_a_node_rejoined_after_dying_counts_once() -> None:
    nodes = [_node("h1"), _node("h2", alive=False), _node("h2"), _node("h3")]
    assert assess(EXPECTED, nodes, "job1") == []


def test_wrong_resources_are_named_with_what_was_expected() -> None:
    expected = [ExpectedNode("h1", 2, cpus=1), ExpectedNode("h2", 2, cpus=1)]
    problems = assess(expected, [_node("h1"), _node("h2", gpus=0, cpus=4)], "job1")
    assert [str(p) for p in problems] == [
        "h2: 0 GPUs (expected 2)",
        "h2: 4 CPUs (expected 1)",
    ]


def test_a_version_mismatch_is_final_and_names_what_differs() -> None:
    odd = FINGERPRINT | {"vllm": "0.0.0-fake"}
    problems = assess(EXPECTED, [_node("h1"), _node("h2"), _node("h3", versions=odd)], "job1")
    assert len(problems) == 1 and problems[0].final and problems[0].host == "h3"
    assert "vllm 0.0.0-fake (head: 0.32.0)" in problems[0].what


def test_the_head_sets_the_reference_even_when_it_is_the_odd_one() -> None:
    odd = FINGERPRINT | {"ray": "2.59.0"}
    problems = assess(EXPECTED, [_node("h2"), _node("h3"), _node("h1", versions=odd)], "job1")
    assert {p.host for p in problems} == {"h2", "h3"}


def test_other_clusters_nodes_are_ignored_and_unexpected_ones_named() -> None:
    nodes = [_node("h1"), _node("h2"), _node("h3"), _node("h9", cluster="other"), _node("h4")]
    assert [str(p) for p in assess(EXPECTED, nodes, "job1")] == [
        "h4: joined the cluster but is not expected"
    ]


def test_a_raylet_that_does_not_answer_is_named() -> None:
    nodes = [_node("h1"), _node("h2"), _node("h3")]
    problems = assess(EXPECTED, nodes, "job1", reachable=lambda n: n.host != "h2")
    assert len(problems) == 1 and problems[0].host == "h2"
    assert "raylet not answering" in problems[0].what


# --- cluster file --------------------------------------------------------------------------


def test_the_default_name_is_the_job_id_else_local() -> None:
    assert default_cluster_name({"PBS_JOBID": "1234.aurora-pbs-0001"}) == "1234.aurora-pbs-0001"
    assert default_cluster_name({"SLURM_JOB_ID": "77"}) == "77"
    assert default_cluster_name({}) == "local"


def test_the_default_file_is_in_home_unless_the_environment_names_one(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert default_cluster_file(None, home) == tmp_path / ".hpcinfer/ray/local.json"
    assert default_cluster_file("big", home) == tmp_path / ".hpcinfer/ray/big.json"
    given = home | {"HPCINFER_RAY_CLUSTER": str(tmp_path / "c.json"), "PBS_JOBID": "9"}
    assert default_cluster_file(None, given) == tmp_path / "c.json"
    with pytest.raises(SpecError, match="cluster name"):
        default_cluster_file("../x", home)


def _cluster() -> RayClusterFile:
    return RayClusterFile(
        name="job1",
        address="10.0.0.1:26800",
        head_host="h1",
        nodes=[
            RayNodeRecord(
                host="h1", address="10.0.0.1", gpus=2, cpus=1, temp_dir="/t/h1", head=True
            ),
            RayNodeRecord(host="h2", address="10.0.0.2", gpus=2, cpus=1, temp_dir="/t/h2"),
        ],
        gpus_per_node=2,
        ports=ray_ports(26800),
        temp_root="/t",
        interface="hpci0",
        launcher="ssh",
        created_at="2026-12-05T10:00:00+00:00",
    )


def test_the_cluster_file_round_trips(tmp_path: Path) -> None:
    path = save_cluster(_cluster(), tmp_path / "ray" / "job1.json")
    loaded = load_cluster(path)
    assert loaded == _cluster()
    assert loaded.hosts == ["h1", "h2"] and split_address(loaded.address) == ("10.0.0.1", 26800)
    assert json.loads(path.read_text())["ports"]["gcs"] == 26800


def test_a_missing_or_broken_cluster_file_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="hpcinfer ray up"):
        load_cluster(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x"}')
    with pytest.raises(InputError, match=r"(?s)broken.json.*address: Field required"):
        load_cluster(broken)


# --- launching -----------------------------------------------------------------------------


def _argv(hosts: list[str], offset: int) -> list[str]:
    return [
        "python",
        "-m",
        "hpcinfer",
        "ray",
        "node-x",
        "--offset",
        str(offset),
        *(a for h in hosts for a in ("--host", h)),
    ]


def test_ssh_runs_one_command_per_host_with_the_configured_ssh() -> None:
    env = {
        "HPCINFER_SSH": "ssh -F '/tmp/my config'",
        "PATH": "/venv/bin:/usr/bin",
        "PYTHONPATH": "/src",
        fp.FINGERPRINT_ENV: "ray=1",
    }
    launches = node_launches("ssh", ["h2", "h3"], _argv, env, cwd="/work")
    assert [launch.hosts for launch in launches] == [("h2",), ("h3",)]
    first = launches[0].argv
    assert first[:3] == ["ssh", "-F", "/tmp/my config"] and first[-2] == "h2"
    remote = shlex.split(first[-1])
    assert remote[:3] == ["cd", "/work", "&&"]
    assert "PYTHONPATH=/src" in remote and "PATH=/venv/bin:/usr/bin" in remote
    assert not any(fp.FINGERPRINT_ENV in word for word in remote)  # each node's own
    assert remote[-4:] == ["--offset", "0", "--host", "h2"]
    assert shlex.split(launches[1].argv[-1])[-4:] == ["--offset", "1", "--host", "h3"]


def test_local_runs_on_this_machine_only() -> None:
    (launch,) = node_launches("local", ["vm"], _argv, {})
    assert launch.argv == _argv(["vm"], 0)
    with pytest.raises(HardwareError, match="this machine only"):
        node_launches("local", ["h1", "h2"], _argv, {})


def test_srun_is_one_launch_over_every_host_inside_slurm() -> None:
    (launch,) = node_launches("srun", ["n1", "n2"], _argv, {"SLURM_JOB_ID": "5"})
    # --overlap: the node commands' step lasts as long as Ray; ray down's step runs beside it
    assert launch.argv[:7] == [
        "srun",
        "--overlap",
        "--nodes",
        "2",
        "--ntasks-per-node",
        "1",
        "--nodelist",
    ]
    assert launch.hosts == ("n1", "n2")
    with pytest.raises(HardwareError, match="Slurm allocation"):
        node_launches("srun", ["n1"], _argv, {})


def test_the_srun_node_start_step_gets_the_whole_node() -> None:
    """Ray's workers run inside the node-start step: one CPU (srun's default) would be all
    they share; the node's CPUs and GPUs, --overlap for down's step, never --exact."""
    env = {"SLURM_JOB_ID": "5", "SLURM_CPUS_ON_NODE": "128"}
    request = UpRequest("n", ("n1", "n2"), "srun", Path("c.json"), 4)
    (start,) = node_launches(
        "srun", ["n1", "n2"], _node_start_argv(request, None), env, whole_node_gpus=4
    )
    options = start.argv[: start.argv.index("--nodelist")]
    assert options[0] == "srun" and "--overlap" in options
    assert "--cpus-per-task=128" in options and "--gpus-per-node=4" in options
    assert not any(a.startswith("--exact") for a in start.argv)
    (cpu_only,) = node_launches("srun", ["n1"], _argv, env, whole_node_gpus=0)
    assert not any(a.startswith(("--gpus", "--gres")) for a in cpu_only.argv)
    (stop,) = node_launches("srun", ["n1"], _argv, env)  # ray down's step: no resources
    assert not any(a.startswith(("--cpus-per-task", "--gpus")) for a in stop.argv)


def test_the_record_prefix_is_one_word() -> None:
    assert " " not in RECORD_PREFIX.strip()


# --- on the node ---------------------------------------------------------------------------


def test_a_node_finds_its_host_by_its_launcher_rank() -> None:
    assert which_host(["h2"], {}) == ("h2", 0)
    mpich = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "1"}
    assert which_host(["h2", "h3"], mpich) == ("h3", 1)
    with pytest.raises(HardwareError, match="no launcher rank"):
        which_host(["h2", "h3"], {})


def test_a_node_matches_only_its_own_temp_dir() -> None:
    temp = Path("/tmp/hpcinfer-ray-abcd1234/h1")
    assert names_dir("raylet --temp_dir=/tmp/hpcinfer-ray-abcd1234/h1 --x", temp)
    assert names_dir("gcs --log_dir=/tmp/hpcinfer-ray-abcd1234/h1/session_1/logs", temp)
    assert not names_dir("raylet --temp_dir=/tmp/hpcinfer-ray-abcd1234/h10 --x", temp)
    assert not names_dir("raylet --temp_dir=/tmp/hpcinfer-ray-abcd1234/h2", temp)


@pytest.mark.parametrize(
    ("launcher", "blocks"), [("ssh", False), ("local", False), ("mpi", True), ("srun", True)]
)
def test_node_commands_stay_for_the_clusters_life_under_mpi_and_srun(
    launcher: str, blocks: bool, tmp_path: Path
) -> None:
    """Slurm ends a step's processes with the step: under srun (and mpi) each node command
    holds on while its node's Ray runs; under ssh it returns once Ray is up."""
    request = UpRequest(
        name="job1",
        hosts=("h1", "h2"),
        launcher=launcher,  # type: ignore[arg-type]
        cluster_file=tmp_path / "c.json",
        gpus_per_node=4,
        interface="hsn0",
    )
    argv = _node_start_argv(request, "10.0.0.1:26800")(["h2"], 1)
    assert ("--block" in argv) is blocks
    opts = dict(itertools.pairwise(argv))
    assert opts["--temp-root"] == str(request.temp_root) and opts["--host"] == "h2"
    assert opts["--port-base"] == str(port_base_for("job1")) and opts["--rank-offset"] == "1"
    assert opts["--head-address"] == "10.0.0.1:26800" and opts["--interface"] == "hsn0"


def _control_headed(tmp_path: Path, head_gpus: int | None) -> UpRequest:
    return UpRequest(
        name="own",
        hosts=("control", "c1", "c2"),
        launcher="ssh",
        cluster_file=tmp_path / "c.json",
        gpus_per_node=1,
        head_gpus=head_gpus,
    )


def test_a_gpu_less_control_node_heads_gpu_workers(tmp_path: Path) -> None:
    """--head-gpus 0: the head starts declaring no GPU, each worker its --gpus-per-node, and
    readiness expects exactly that (a cluster of one's own: a NUC heads A770 nodes)."""
    request = _control_headed(tmp_path, 0)
    head = dict(itertools.pairwise(_node_start_argv(request, None)(["control"], 0)))
    worker = dict(itertools.pairwise(_node_start_argv(request, "10.0.0.1:26800")(["c1"], 1)))
    assert head["--gpus"] == "0" and worker["--gpus"] == "1"
    expected = expected_nodes(request)
    assert [(e.host, e.gpus) for e in expected] == [("control", 0), ("c1", 1), ("c2", 1)]
    live = [_node("control", gpus=0, cluster="own"), _node("c1", gpus=1, cluster="own")]
    live.append(_node("c2", gpus=1, cluster="own"))
    assert assess(expected, live, "own") == []
    live[0] = _node("control", gpus=1, cluster="own")  # a head declaring a GPU is not it
    assert [str(p) for p in assess(expected, live, "own")] == ["control: 1 GPUs (expected 0)"]
    assert _starting_record(request).head_gpus == 0


def test_without_head_gpus_the_head_declares_what_every_node_does(tmp_path: Path) -> None:
    request = _control_headed(tmp_path, None)
    head = dict(itertools.pairwise(_node_start_argv(request, None)(["control"], 0)))
    assert head["--gpus"] == "1" and request.head_gpu_count == 1
    assert {e.gpus for e in expected_nodes(request)} == {1}


def test_head_gpus_is_resolved_and_a_negative_count_refused(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("control\nc1\n")
    env = {"HOME": str(tmp_path)}
    request = resolve_up_request(
        hostfile=hostfile, gpus_per_node=2, head_gpus=0, name="own", env=env
    )
    assert request.head_gpu_count == 0 and request.gpus_per_node == 2
    assert request.hosts == ("control", "c1") and request.launcher == "ssh"
    with pytest.raises(SpecError, match="--head-gpus -1: give 0 or more"):
        resolve_up_request(hostfile=hostfile, gpus_per_node=2, head_gpus=-1, env=env)


def test_a_node_stop_ends_its_session_and_its_folders_processes_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renamed daemon in the node's session, a Ray program naming its folder that ignores
    SIGTERM (as gcs_server at times does): both end; a neighbour node's Ray program and the
    user's own program that only names the folder (`tail -f .../ray-start.log`) are left."""
    import subprocess

    from hpcinfer.raycluster import node_processes as np

    package = tmp_path / "site-packages" / "ray"
    package.mkdir(parents=True)
    monkeypatch.setattr(np, "RAY_PACKAGE_DIRS", (f"{package}/",))
    gcs = package / "gcs_server.py"
    gcs.write_text(
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)\n"
    )
    mine, other = tmp_path / "h1", tmp_path / "h10"
    daemon = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    stubborn, neighbour = (
        subprocess.Popen(
            [sys.executable, str(gcs), f"--temp-dir={folder}"], stdout=subprocess.PIPE, text=True
        )
        for folder in (mine, other)
    )
    tail = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"{mine}/ray-start.log"]
    )
    assert stubborn.stdout and stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored now
    try:
        write_node_record(mine, daemon.pid, "h1", "job1")
        found = {p.pid for p in np.node_processes(mine)}
        assert found == {daemon.pid, stubborn.pid}
        stopped, left = np.stop_node_processes(mine, grace_s=0.5)
        assert stopped == 2 and left == []
        assert daemon.wait(5) == -signal.SIGTERM and stubborn.wait(5) == -signal.SIGKILL
        assert neighbour.poll() is None and tail.poll() is None
    finally:
        for proc in (daemon, stubborn, neighbour, tail):
            proc.kill()
            proc.wait()


def _starting(tmp_path: Path) -> RayClusterFile:
    return RayClusterFile(
        name="t",
        state="starting",
        address="",
        head_host="localhost",
        nodes=[],
        planned_hosts=["localhost"],
        gpus_per_node=0,
        ports=ray_ports(FIRST_BASE),
        temp_root=str(cluster_root("t", record=str(tmp_path))),  # short: Ray's socket paths
        launcher="local",
        created_at="2026-01-01T00:00:00+00:00",
    )


def test_a_second_up_of_the_same_file_is_refused_naming_it_and_the_flag(tmp_path: Path) -> None:
    where = tmp_path / "c.json"
    create_cluster(_starting(tmp_path), where, "--cluster-file c.json")
    with pytest.raises(RayClusterError) as refused:
        create_cluster(_starting(tmp_path), where, "--name t")
    assert str(where) in str(refused.value)
    assert "hpcinfer ray down --name t" in str(refused.value)
    assert json.loads(where.read_text())["state"] == "starting"
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left


def test_only_down_reads_a_cluster_that_is_still_starting(tmp_path: Path) -> None:
    where = tmp_path / "c.json"
    create_cluster(_starting(tmp_path), where, "")
    with pytest.raises(InputError, match="still starting"):
        load_cluster(where)
    report = ray_down(where)  # a killed `up`: its file is all down has
    assert report.hosts == ["localhost"] and not where.exists()


def test_the_already_running_message_names_the_users_flag(tmp_path: Path) -> None:
    assert down_hint(None, tmp_path / "c.json") == f"--cluster-file {tmp_path / 'c.json'}"
    assert down_hint("x", None) == "--name x"
    assert down_hint(None, None) == ""
    request = UpRequest(
        "n", ("h1",), "ssh", tmp_path / "c.json", 0, down_hint="--cluster-file c.json"
    )
    argv = _node_start_argv(request, None)(["h1"], 0)
    assert argv[argv.index("--down-hint") + 1] == "--cluster-file c.json"


def _fake_ssh(tmp_path: Path) -> str:
    """An ssh that runs the remote command here, except for host "gone" (exit 255)."""
    ssh = tmp_path / "ssh"
    ssh.write_text('#!/bin/sh\nshift 2\n[ "$1" = gone ] && exit 255\nexec sh -c "$2"\n')
    ssh.chmod(0o755)
    return str(ssh)


def test_down_stops_the_head_when_a_worker_fails_and_forget_drops_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.setenv("HPCINFER_SSH", _fake_ssh(tmp_path))
    cluster = _starting(tmp_path).model_copy(
        update={"planned_hosts": ["head", "gone"], "head_host": "head", "launcher": "ssh"}
    )
    where = tmp_path / "c.json"
    save_cluster(cluster, where)
    head = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        write_node_record(node_temp_dir(Path(cluster.temp_root), "head"), head.pid, "head", "t")
        with pytest.raises(RayClusterError) as failed:
            ray_down(where)
        assert "could not stop Ray on gone" in str(failed.value)
        assert "--forget" in str(failed.value)
        assert head.wait(10) == -signal.SIGTERM  # the head went down all the same
        assert where.exists()  # kept for another try
        report = ray_down(where, forget=True)
        assert report.forgotten == ["gone"] and not where.exists()
    finally:
        head.kill()
        head.wait()


def test_a_failed_up_waits_for_the_last_staggered_worker_before_stopping() -> None:
    """The last worker sleeps hosts x stagger, then runs `ray start`: stopping sooner would
    find nothing, and its Ray would start after the take-down."""
    hosts = tuple(f"h{i}" for i in range(64))
    request = UpRequest("n", hosts, "ssh", Path("c.json"), 0, stagger_s=2.0)
    assert settle_s(request) >= 64 * 2.0 + RAY_START_TIMEOUT_S


def test_the_temp_root_is_private_and_a_planted_one_is_refused(tmp_path: Path) -> None:
    """/tmp is shared: the root is 0700, and a symlink or another user's directory put at
    its name in advance never receives the cluster's files."""
    import os

    from hpcinfer.raycluster.layout import make_private_root

    root = make_private_root(tmp_path / "hpcinfer-ray-a")
    assert root.is_dir() and root.stat().st_mode & 0o777 == 0o700
    (tmp_path / "elsewhere").mkdir()
    planted = tmp_path / "hpcinfer-ray-b"
    planted.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RayClusterError, match=r"hpcinfer-ray-b is a symbolic link"):
        make_private_root(planted)
    if os.geteuid() == 0:  # as root: a directory of another user
        foreign = tmp_path / "hpcinfer-ray-c"
        foreign.mkdir(mode=0o777)
        os.chown(foreign, 65534, -1)
        with pytest.raises(RayClusterError, match="belongs to another user"):
            make_private_root(foreign)
