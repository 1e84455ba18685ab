"""Rank detection, rendezvous, joins, self-launch commands and the walltime limit."""

from __future__ import annotations

import json
import shlex
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from hpcinfer.cluster.allocation import Allocation
from hpcinfer.core.processes import without_rank_vars
from hpcinfer.core.time_limits import effective_time_limit
from hpcinfer.errors import HardwareError
from hpcinfer.launch.rank_commands import launch_commands, mpi_flavor
from hpcinfer.run.joins import JoinListener
from hpcinfer.run.ranks import FileRendezvous, current_rank, launch_id
from hpcinfer.spec import JobSpec
from tests.harness import wait_for

# -- which process is which rank -----------------------------------------------------------


def test_mpich_rank_is_read_from_hydra_variables() -> None:
    env = {"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3"}
    info = current_rank("mpi", env)
    assert info is not None
    assert (info.rank, info.local_rank, info.world_size, info.local_size) == (2, 2, 3, 3)


def test_sbatch_batch_script_is_not_a_rank() -> None:
    # The batch step has SLURM_PROCID/SLURM_NTASKS but no step id: hpcinfer must launch.
    env = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}
    assert current_rank("srun", env) is None


def test_srun_task_is_a_rank() -> None:
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_NODEID": "1",
    }
    info = current_rank("srun", env)
    assert info is not None and (info.rank, info.local_rank, info.local_size) == (3, 1, 2)


def test_hpcinfer_ssh_variables_come_first_and_are_checked() -> None:
    env = {"HPCINFER_RANK": "1", "HPCINFER_LOCAL_RANK": "0", "HPCINFER_WORLD_SIZE": "2"}
    with pytest.raises(HardwareError, match="HPCINFER_LOCAL_SIZE"):
        current_rank("ssh", env)
    info = current_rank("ssh", env | {"HPCINFER_LOCAL_SIZE": "1", "PMI_RANK": "0"})
    assert info is not None and info.rank == 1 and info.launcher == "hpcinfer"


def test_no_launcher_means_no_rank() -> None:
    assert current_rank("mpi", {"HOME": "/root"}) is None


def test_workers_do_not_inherit_rank_variables() -> None:
    env = {"PMI_RANK": "1", "OMPI_COMM_WORLD_RANK": "1", "SLURM_PROCID": "1", "HF_HOME": "/h"}
    assert without_rank_vars(env) == {"HF_HOME": "/h"}


# -- rendezvous ---------------------------------------------------------------------------


def test_file_rendezvous_ignores_an_earlier_launch(tmp_path: Path) -> None:
    old = FileRendezvous(tmp_path, "launch-old")
    old.share("10.0.0.1:1", b"k1")
    new_rank = FileRendezvous(tmp_path, "launch-new", wait_s=0.5)
    with pytest.raises(HardwareError, match="did not publish"):
        new_rank.share(None, None)
    FileRendezvous(tmp_path, "launch-new").share("10.0.0.2:2", b"k2")
    assert new_rank.share(None, None) == ("10.0.0.2:2", b"k2")
    assert oct((tmp_path / ".coordinator.json").stat().st_mode & 0o777) == "0o600"


def test_launch_id_from_slurm_step_or_hpcinfer() -> None:
    assert launch_id({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "1"}) == "slurm-9.1"
    assert launch_id({"HPCINFER_LAUNCH_ID": "abc"}) == "abc"
    with pytest.raises(HardwareError, match="HPCINFER_LAUNCH_ID"):
        launch_id({})


# -- joins ----------------------------------------------------------------------------------


def _hello(rank: int, slot: int = 0, slots: int = 1) -> tuple[str, dict]:
    return ("hello", {"rank": rank, "slot": slot, "slots": slots, "host": "n1", "devices": ["g0"]})


def test_join_listener_admits_authenticated_workers_only() -> None:
    # generous bounds: on a loaded 2-core machine a local join has taken over 10 s
    joins = JoinListener("127.0.0.1", "127.0.0.1", world_size=3, wait_s=300)
    try:
        host, port = joins.address.rsplit(":", 1)
        with pytest.raises(AuthenticationError):
            Client((host, int(port)), authkey=b"wrong key")
        assert joins.pending()
        first = Client((host, int(port)), authkey=joins.key)
        first.send(_hello(1))
        arrived = wait_for(
            lambda: joins.take() if joins.doorbell.poll(0.1) else [], 120, "rank 1 to join"
        )
        assert [(j.rank, j.host, j.devices) for j in arrived] == [(1, "n1", ["g0"])]
        assert joins.pending() and joins.missing_ranks() == [2]
        second = Client((host, int(port)), authkey=joins.key)
        second.send(_hello(2))
        wait_for(lambda: not joins.missing_ranks(), 120, "rank 2 to join")
        assert joins.pending()  # joined, not yet taken by the coordinator
        assert [j.rank for j in joins.take()] == [2]
        assert not joins.pending()
        first.close()
        second.close()
    finally:
        joins.close()


def test_join_listener_stops_waiting_at_its_deadline() -> None:
    joins = JoinListener("127.0.0.1", "127.0.0.1", world_size=2, wait_s=0.0)
    try:
        time.sleep(0.01)
        assert not joins.pending()
        assert joins.missing_ranks() == [1]
    finally:
        joins.close()


# -- hpcinfer starting the ranks ------------------------------------------------------------


def _alloc(*hosts: str, source: str = "pbs") -> Allocation:
    return Allocation(hosts=hosts, slots={h: 1 for h in hosts}, source=source, job_id="1")


RANK_CMD = ["python", "-m", "hpcinfer", "run", "s.yaml"]


def test_mpi_flavor_from_version_text() -> None:
    assert mpi_flavor("mpiexec", lambda _: "HYDRA build details:\n") == "mpich"
    assert mpi_flavor("mpiexec", lambda _: "mpiexec (OpenRTE) 4.1.5") == "openmpi"


def test_self_launch_mpich_across_the_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "hpcinfer.launch.rank_commands.find_mpiexec", lambda: "/opt/mpi/bin/mpiexec"
    )
    spec = JobSpec.model_validate({"workers": {"count": 12}})
    cmds = launch_commands(
        spec,
        "mpi",
        ["python", "-m", "hpcinfer", "run", "s.yaml"],
        _alloc("x1", "x2"),
        {},
        runner=lambda _: "HYDRA",
    )
    assert cmds == [
        ["/opt/mpi/bin/mpiexec", "-n", "24", "-ppn", "12", "--hosts", "x1,x2", *RANK_CMD]
    ]


def test_self_launch_openmpi_as_root_on_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hpcinfer.launch.rank_commands.find_mpiexec", lambda: "mpirun")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    spec = JobSpec.model_validate({"workers": {"count": 3}})
    (cmd,) = launch_commands(
        spec,
        "mpi",
        ["hpcinfer", "run"],
        _alloc("me", source="local"),
        {},
        runner=lambda _: "mpirun (Open MPI) 5.0",
    )
    assert cmd[:3] == ["mpirun", "-n", "3"]
    assert "--allow-run-as-root" in cmd and "--oversubscribe" in cmd


def test_srun_outside_slurm_is_refused() -> None:
    spec = JobSpec.model_validate({"workers": {"count": 1}})
    with pytest.raises(HardwareError, match="salloc"):
        launch_commands(spec, "srun", ["hpcinfer"], _alloc("a", source="local"), {})


def test_ssh_gives_each_host_its_rank_and_quotes_everything(tmp_path: Path) -> None:
    spec = JobSpec.model_validate({"workers": {"count": 2}})
    env = {"HF_HOME": "/p with space/$(x)", "HF_TOKEN": "secret", "PATH": "/bin"}
    cmds = launch_commands(spec, "ssh", ["python", "-m", "hpcinfer", "run"], _alloc("a", "b"), env)
    assert [c[3] for c in cmds] == ["a", "b"]
    for rank, cmd in enumerate(cmds):
        remote = shlex.split(cmd[4])
        assert f"HPCINFER_RANK={rank}" in remote and "HPCINFER_WORLD_SIZE=2" in remote
        assert "HF_HOME=/p with space/$(x)" in remote
        assert not any("secret" in part for part in cmd), "secrets never reach a command line"
    ids = {next(p for p in shlex.split(c[4]) if p.startswith("HPCINFER_LAUNCH_ID")) for c in cmds}
    assert len(ids) == 1


def test_ssh_takes_options_from_hpcinfer_ssh_and_forwards_the_import_path() -> None:
    """$HPCINFER_SSH is a command line (a program and its options, split as a shell would);
    a rank on another host imports the same hpcinfer as the launching process."""
    spec = JobSpec.model_validate({"workers": {"count": 1}})
    env = {"HPCINFER_SSH": "ssh -F '/cfg dir/ssh_config'", "PYTHONPATH": "/src a:/src b"}
    cmds = launch_commands(spec, "ssh", ["python", "-m", "hpcinfer"], _alloc("a", "b"), env)
    for host, cmd in zip(("a", "b"), cmds, strict=True):
        assert cmd[:6] == ["ssh", "-F", "/cfg dir/ssh_config", "-o", "BatchMode=yes", host]
        assert "PYTHONPATH=/src a:/src b" in shlex.split(cmd[6])
    plain = launch_commands(spec, "ssh", ["python"], _alloc("a"), {"HPCINFER_SSH": ""})
    assert plain[0][:4] == ["ssh", "-o", "BatchMode=yes", "a"]


def test_an_unparsable_hpcinfer_ssh_is_named() -> None:
    spec = JobSpec.model_validate({"workers": {"count": 1}})
    with pytest.raises(HardwareError, match=r"\$HPCINFER_SSH .*ssh -F /path/to/ssh_config"):
        launch_commands(spec, "ssh", ["python"], _alloc("a"), {"HPCINFER_SSH": "ssh -F 'x"})


def test_ssh_needs_hosts() -> None:
    spec = JobSpec.model_validate({"workers": {"count": 1}})
    with pytest.raises(HardwareError, match="hostfile"):
        launch_commands(spec, "ssh", ["hpcinfer"], _alloc("me", source="local"), {})


# -- walltime --------------------------------------------------------------------------------


def test_walltime_drives_the_time_limit_with_a_margin() -> None:
    spec = JobSpec()
    assert effective_time_limit(spec, None) == (None, "")
    assert effective_time_limit(spec, 3600.0) == (3240.0, "walltime")  # 10% margin
    assert effective_time_limit(spec, 300.0) == (240.0, "walltime")  # at least 60 s
    assert effective_time_limit(spec, 36000.0) == (35100.0, "walltime")  # at most 15 min
    assert effective_time_limit(spec, 30.0) == (0.0, "walltime")
    explicit = JobSpec.model_validate({"time_limit": "10m"})
    assert effective_time_limit(explicit, 3600.0) == (600.0, "time limit")


def test_rendezvous_file_is_json_with_hex_key(tmp_path: Path) -> None:
    FileRendezvous(tmp_path, "L").share("h:1", b"\x01\x02")
    assert json.loads((tmp_path / ".coordinator.json").read_text())["key"] == "0102"


def test_workers_never_admitted_are_told_there_is_no_work_at_close() -> None:
    # A rerun of a finished job: a rank's worker joins, the job has nothing for it.
    joins = JoinListener("127.0.0.1", "127.0.0.1", world_size=2, wait_s=30)
    host, port = joins.address.rsplit(":", 1)
    worker = Client((host, int(port)), authkey=joins.key)
    worker.send(_hello(1))
    assert joins.doorbell.poll(10)
    joins.close()
    assert worker.poll(10) and worker.recv() is None  # the worker exits instead of waiting
    worker.close()
