"""The allocation, the rank contract and the walltime left (REFERENCE §1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hpcinfer.cluster.allocation import (
    Allocation,
    RankInfo,
    expand_hostlist,
    parse_tasks_per_node,
    read_allocation,
    read_rank,
    remaining_walltime_s,
    short_hostname,
)
from hpcinfer.errors import HardwareError

# --- hostlist ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "hosts"),
    [
        ("nid[001-004,010]", ["nid001", "nid002", "nid003", "nid004", "nid010"]),
        ("node7", ["node7"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("n[1-3,5]", ["n1", "n2", "n3", "n5"]),
        ("x[0009-0011]", ["x0009", "x0010", "x0011"]),
        (
            "rack[1-2]-node[01-02]",
            ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"],
        ),
        ("a[1-2],b3,c[05-06]", ["a1", "a2", "b3", "c05", "c06"]),
        (" nid[001 - 002 , 005] , login1 ", ["nid001", "nid002", "nid005", "login1"]),
        ("a1 b2\tc3", ["a1", "b2", "c3"]),
        ("x4000c0s[0-1]b0n0.hsn", ["x4000c0s0b0n0.hsn", "x4000c0s1b0n0.hsn"]),
        ("a,,b", ["a", "b"]),
        ("", []),
    ],
)
def test_expand_hostlist(expr: str, hosts: list[str]) -> None:
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        ("nid[001-004", "'['"),
        ("nid001-004]", "']'"),
        ("nid[[1-2]]", "nested"),
        ("nid[5-3]", "5-3"),
        ("nid[a-c]", "a-c"),
        ("nid[1-x]", "1-x"),
        ("nid[]", "[]"),
        ("nid[1,,2]", "[1,,2]"),
        ("nid[0-99999999]", "more than"),
    ],
)
def test_expand_hostlist_errors_name_expression_and_part(expr: str, bad: str) -> None:
    with pytest.raises(HardwareError) as info:
        expand_hostlist(expr)
    assert repr(expr) in str(info.value)
    assert bad in str(info.value)


def test_short_hostname() -> None:
    assert short_hostname("x4000c0s0b0n0.hostmgmt.cm.aurora.alcf.anl.gov") == "x4000c0s0b0n0"
    assert short_hostname("node1") == "node1"


# --- allocation -------------------------------------------------------------------------


def test_pbs_nodefile_repeats_count_as_slots(tmp_path: Path) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("b.x.gov\nb.x.gov\na.x.gov\nb.x.gov\n\na.x.gov\n")
    alloc = read_allocation({"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "123.pbs"})
    assert alloc == Allocation(
        hosts=("b.x.gov", "a.x.gov"), slots={"b.x.gov": 3, "a.x.gov": 2}, source="pbs",
        job_id="123.pbs",
    )  # fmt: skip
    assert alloc.total_slots == 5


def test_missing_nodefile_names_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(HardwareError, match=r"\$PBS_NODEFILE") as info:
        read_allocation({"PBS_NODEFILE": str(missing)})
    assert str(missing) in str(info.value)


def test_empty_nodefile_is_an_error(tmp_path: Path) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("\n\n")
    with pytest.raises(HardwareError, match="empty"):
        read_allocation({"PBS_NODEFILE": str(nodefile)})


def test_slurm_nodelist_with_tasks_per_node() -> None:
    env = {
        "SLURM_JOB_NODELIST": "nid[001-003],nid010",
        "SLURM_TASKS_PER_NODE": "2(x3),1",
        "SLURM_JOB_ID": "42",
    }
    alloc = read_allocation(env)
    assert alloc.hosts == ("nid001", "nid002", "nid003", "nid010")
    assert alloc.slots == {"nid001": 2, "nid002": 2, "nid003": 2, "nid010": 1}
    assert (alloc.source, alloc.job_id) == ("slurm", "42")


def test_slurm_without_tasks_gives_one_slot_and_reads_old_variable() -> None:
    alloc = read_allocation({"SLURM_NODELIST": "n[1-2]"})
    assert alloc.slots == {"n1": 1, "n2": 1}
    assert alloc.job_id is None


def test_slurm_tasks_count_must_match_nodes() -> None:
    env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    with pytest.raises(HardwareError, match="2 node"):
        read_allocation(env)


@pytest.mark.parametrize(
    ("value", "counts"),
    [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2( x2)", None), ("12(x2)", [12, 12])],
)
def test_parse_tasks_per_node(value: str, counts: list[int] | None) -> None:
    if counts is None:
        with pytest.raises(HardwareError, match="SLURM_TASKS_PER_NODE"):
            parse_tasks_per_node(value)
    else:
        assert parse_tasks_per_node(value) == counts


def test_hostfile_formats(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text(
        "# cluster hosts\n"
        "node1 slots=4\n"
        "\n"
        "node2:2   # MPICH style\n"
        "node3\n"
        "node4 slots=8 max_slots=16\n"
        "node3\n"
    )
    alloc = read_allocation({}, hostfile=hostfile)
    assert alloc.hosts == ("node1", "node2", "node3", "node4")
    assert alloc.slots == {"node1": 4, "node2": 2, "node3": 2, "node4": 8}
    assert (alloc.source, alloc.job_id) == ("hostfile", None)


@pytest.mark.parametrize(
    ("line", "match"),
    [("node1 slots=x", "slot count"), ("node1:0", "slot count"), ("node1 four", "four")],
)
def test_hostfile_errors_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"node0\n{line}\n")
    with pytest.raises(HardwareError, match=match) as info:
        read_allocation({}, hostfile=hostfile)
    assert f"{hostfile}:2" in str(info.value)


def test_missing_or_empty_hostfile(tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="cannot read hostfile"):
        read_allocation({}, hostfile=tmp_path / "none")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(HardwareError, match="no hosts"):
        read_allocation({}, hostfile=empty)


def test_precedence_hostfile_then_pbs_then_slurm_then_local(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1\n")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("p1\n")
    env = {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "7", "SLURM_JOB_NODELIST": "s1"}
    assert read_allocation(env, hostfile=hostfile).source == "hostfile"
    assert read_allocation(env, hostfile=hostfile).job_id == "7"
    assert read_allocation(env).source == "pbs"
    assert read_allocation({"SLURM_JOB_NODELIST": "s1", "PBS_NODEFILE": ""}).source == "slurm"
    local = read_allocation({})
    assert local == Allocation(
        hosts=(socket.gethostname(),), slots={socket.gethostname(): 1}, source="local",
        job_id=None,
    )  # fmt: skip


# --- rank contract ----------------------------------------------------------------------

OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
}
MPICH = {"PMI_RANK": "6", "MPI_LOCALRANKID": "2", "PMI_SIZE": "8", "MPI_LOCALNRANKS": "4"}
PALS_PMIX = {
    "PMIX_RANK": "13",
    "PALS_RANKID": "13",
    "PALS_LOCAL_RANKID": "1",
    "PMI_SIZE": "24",
    "PALS_LOCAL_SIZE": "12",
}
SLURM = {
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (OPENMPI, RankInfo(5, 1, 8, 4, "openmpi")),
        (MPICH, RankInfo(6, 2, 8, 4, "mpich")),
        (PALS_PMIX, RankInfo(13, 1, 24, 12, "pmix")),
        ({**PALS_PMIX, "PALS_SIZE": "36"}, RankInfo(13, 1, 36, 12, "pmix")),
        (SLURM, RankInfo(3, 1, 4, 2, "slurm")),
        (
            {k: v for k, v in PALS_PMIX.items() if k != "PMIX_RANK"},
            RankInfo(13, 1, 24, 12, "pals"),
        ),
    ],
)
def test_read_rank_per_launcher(env: dict[str, str], expected: RankInfo) -> None:
    assert read_rank(env) == expected


def test_openmpi_wins_when_several_are_set() -> None:
    env = {**SLURM, **PALS_PMIX, **MPICH, **OPENMPI}
    assert read_rank(env) == RankInfo(5, 1, 8, 4, "openmpi")
    without_ompi = {**SLURM, **PALS_PMIX, **MPICH}
    assert read_rank(without_ompi) == RankInfo(6, 2, 8, 4, "mpich")


def test_rank_var_without_local_rank_yields_to_a_complete_launcher() -> None:
    # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE but no Hydra local rank; Aurora's PALS with
    # Cray PMI sets PMI_RANK beside the PALS variables.
    srun_pmi2 = {**SLURM, "PMI_RANK": "3", "PMI_SIZE": "4"}
    assert read_rank(srun_pmi2) == RankInfo(3, 1, 4, 2, "slurm")
    pals = {**PALS_PMIX, "PMI_RANK": "13"}
    assert read_rank(pals) == RankInfo(13, 1, 24, 12, "pmix")


def test_slurm_local_size_derived_from_tasks_per_node() -> None:
    env = {k: v for k, v in SLURM.items() if k != "SLURM_NTASKS_PER_NODE"}
    env |= {"SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NODEID": "2"}
    env |= {"SLURM_PROCID": "4", "SLURM_LOCALID": "0"}
    assert read_rank(env) == RankInfo(4, 0, 5, 1, "slurm")
    # The step's layout beats a stale job-level --ntasks-per-node.
    step = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "3", "SLURM_STEP_NUM_TASKS": "6"}
    assert read_rank(step) == RankInfo(3, 1, 6, 3, "slurm")


def test_missing_local_rank_is_an_error_unless_alone() -> None:
    with pytest.raises(HardwareError, match=r"\$MPI_LOCALRANKID.*bind devices"):
        read_rank({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert read_rank({"PMI_RANK": "0", "PMI_SIZE": "1"}) == RankInfo(0, 0, 1, 1, "mpich")


def test_missing_sizes_are_errors() -> None:
    with pytest.raises(HardwareError, match=r"\$PMI_SIZE"):
        read_rank({"PMI_RANK": "0", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "1"})
    with pytest.raises(HardwareError, match=r"\$PALS_LOCAL_SIZE"):
        read_rank({"PALS_RANKID": "0", "PALS_LOCAL_RANKID": "0", "PMI_SIZE": "2"})


@pytest.mark.parametrize("name", ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"])
def test_non_integer_names_the_variable(name: str) -> None:
    with pytest.raises(HardwareError, match=rf"\${name}='two'"):
        read_rank({**OPENMPI, name: "two"})


def test_impossible_layout_is_an_error() -> None:
    with pytest.raises(HardwareError, match="impossible"):
        read_rank({**OPENMPI, "OMPI_COMM_WORLD_RANK": "8"})


def test_no_launcher_gives_none() -> None:
    assert read_rank({}) is None
    assert read_rank({"PMI_RANK": "", "PATH": "/bin"}) is None


# --- walltime ---------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, out: str | None) -> None:
        self.out = out
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> str | None:
        self.calls.append(cmd)
        return self.out


@pytest.mark.parametrize(
    ("out", "seconds"),
    [
        ("  12:34\n", 754.0),
        ("1:00:00\n", 3600.0),
        ("1-00:00:01\n", 86401.0),
        ("UNLIMITED\n", None),
        ("NOT_SET\n", None),
    ],
)
def test_squeue_formats(out: str, seconds: float | None) -> None:
    runner = FakeRunner(out)
    assert remaining_walltime_s({"SLURM_JOB_ID": "42"}, runner=runner) == seconds
    assert runner.calls == [["squeue", "-h", "-j", "42", "-o", "%L"]]


def test_squeue_failure_falls_back_to_end_time_then_none() -> None:
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": "1000"}
    assert remaining_walltime_s(env, runner=FakeRunner(None), now=lambda: 400.0) == 600.0
    assert remaining_walltime_s(env, runner=FakeRunner(""), now=lambda: 1200.0) == 0.0
    assert remaining_walltime_s({"SLURM_JOB_ID": "42"}, runner=FakeRunner(None)) is None


QSTAT_TORQUE = """Job Id: 123.server
    Job_Name = run
    Resource_List.walltime = 01:00:00
    resources_used.walltime = 00:10:00
    Walltime.Remaining = 3000
"""
QSTAT_PBSPRO = """Job Id: 456.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov
    Job_Name = run
    resources_used.walltime = 00:20:30
    job_state = R
    Resource_List.walltime = 02:00:00
    Resource_List.select = 2
"""
QSTAT_STARTING = """Job Id: 789.server
    Resource_List.walltime = 120:00:00
"""


@pytest.mark.parametrize(
    ("out", "seconds"),
    [
        (QSTAT_TORQUE, 3000.0),
        (QSTAT_PBSPRO, 7200.0 - 1230.0),
        (QSTAT_STARTING, 120 * 3600.0),
        ("Job Id: 1\n    job_state = R\n", None),
        (None, None),
    ],
)
def test_qstat_outputs(out: str | None, seconds: float | None) -> None:
    runner = FakeRunner(out)
    env = {"PBS_JOBID": "456.aurora-pbs"}
    assert remaining_walltime_s(env, runner=runner) == seconds
    assert runner.calls == [["qstat", "-f", "456.aurora-pbs"]]


def test_no_job_means_no_walltime_and_no_query() -> None:
    runner = FakeRunner("1:00")
    assert remaining_walltime_s({}, runner=runner) is None
    assert runner.calls == []
