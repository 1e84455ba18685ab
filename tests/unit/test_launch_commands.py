"""Launchers as pure argv builders; hostile values must stay inert when rendered."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from hpcinfer.errors import HardwareError
from hpcinfer.launch import (
    LAUNCHERS,
    LaunchRequest,
    local,
    mpiexec_mpich,
    mpiexec_openmpi,
    remote_command,
    srun,
    ssh_fanout,
)

CMD = ["python", "-m", "hpcinfer.run.worker", "--unit", "a b"]
ENV = {"ZE_AFFINITY_MASK": "0,1", "OMP_NUM_THREADS": "8"}
ENV_ARGS = ["env", "ZE_AFFINITY_MASK=0,1", "OMP_NUM_THREADS=8"]

HOSTILE = [
    "has space",
    "single ' quote",
    'double " quote',
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "; rm -rf /",
    "a && b | c > /tmp/x",
    "new\nline",
    "$HOME ${PATH} !! *",
]


def request(**overrides: object) -> LaunchRequest:
    fields: dict[str, object] = {
        "command": CMD,
        "nodes": 2,
        "ranks_per_node": 12,
        "hosts": ("x1.hsn", "x2.hsn"),
        "cpu_bind": "depth",
        "env": ENV,
    }
    fields.update(overrides)
    return LaunchRequest(**fields)  # type: ignore[arg-type]


def assert_parses(line: str) -> None:
    """bash -n reads without running: proof the rendered line is one well-formed command."""
    done = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- exact argv -------------------------------------------------------------------------


def test_mpich() -> None:
    assert mpiexec_mpich(request()) == [
        "mpiexec", "-n", "24", "-ppn", "12", "--hosts", "x1.hsn,x2.hsn",
        "--cpu-bind", "depth", *ENV_ARGS, *CMD,
    ]  # fmt: skip
    bare = request(hosts=(), cpu_bind=None, env={})
    assert mpiexec_mpich(bare) == ["mpiexec", "-n", "24", "-ppn", "12", *CMD]


def test_openmpi() -> None:
    req = request(cpu_bind="core")
    assert mpiexec_openmpi(req) == [
        "mpirun", "-n", "24", "--map-by", "ppr:12:node", "--host", "x1.hsn:12,x2.hsn:12",
        "--bind-to", "core", "-x", "ZE_AFFINITY_MASK=0,1", "-x", "OMP_NUM_THREADS=8", *CMD,
    ]  # fmt: skip
    flags = mpiexec_openmpi(request(hosts=(), cpu_bind=None, env={}), True, True)
    assert flags == [
        "mpirun", "-n", "24", "--map-by", "ppr:12:node", "--oversubscribe",
        "--allow-run-as-root", *CMD,
    ]  # fmt: skip


def test_srun() -> None:
    req = request(cpu_bind="cores")
    assert srun(req) == [
        "srun", "--nodes", "2", "--ntasks-per-node", "12", "--nodelist", "x1.hsn,x2.hsn",
        "--cpu-bind=cores", *ENV_ARGS, *CMD,
    ]  # fmt: skip
    assert srun(request(hosts=(), cpu_bind=None, env={})) == [
        "srun", "--nodes", "2", "--ntasks-per-node", "12", *CMD,
    ]  # fmt: skip


def test_ssh_fanout() -> None:
    req = request(ranks_per_node=1, cpu_bind=None)
    remote = "cd /lus/proj/run && exec env ZE_AFFINITY_MASK=0,1 OMP_NUM_THREADS=8 " + (
        "python -m hpcinfer.run.worker --unit 'a b'"
    )
    assert ssh_fanout(req, cwd="/lus/proj/run") == [
        ["ssh", "-o", "BatchMode=yes", "x1.hsn", remote],
        ["ssh", "-o", "BatchMode=yes", "x2.hsn", remote],
    ]
    plain = ssh_fanout(request(ranks_per_node=1, cpu_bind=None, env={}), ssh="/usr/bin/ssh")
    assert plain[0] == [
        "/usr/bin/ssh", "-o", "BatchMode=yes", "x1.hsn",
        "exec python -m hpcinfer.run.worker --unit 'a b'",
    ]  # fmt: skip


def test_ssh_fanout_with_options() -> None:
    """An argv prefix (the program and its options) goes before the options ssh_fanout adds;
    the host and the one remote argument stay last."""
    req = request(ranks_per_node=1, cpu_bind=None, env={})
    ssh = ["ssh", "-F", "/a b/ssh_config", "-o", "ConnectTimeout=5"]
    remote = "exec python -m hpcinfer.run.worker --unit 'a b'"
    assert ssh_fanout(req, ssh=ssh) == [
        [*ssh, "-o", "BatchMode=yes", "x1.hsn", remote],
        [*ssh, "-o", "BatchMode=yes", "x2.hsn", remote],
    ]
    with pytest.raises(HardwareError, match="empty"):
        ssh_fanout(req, ssh=[])


def test_local() -> None:
    req = request(nodes=1, ranks_per_node=1, hosts=(), cpu_bind=None)
    assert local(req) == [*ENV_ARGS, *CMD]
    assert local(request(nodes=1, ranks_per_node=1, hosts=(), cpu_bind=None, env={})) == CMD


def test_registry() -> None:
    assert set(LAUNCHERS) == {"mpich", "openmpi", "srun", "ssh", "local"}
    assert LAUNCHERS["srun"](request()) == srun(request())


# --- quoting ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_ssh_remote_part_round_trips(value: str) -> None:
    command = ["prog", value, f"--flag={value}"]
    req = request(command=command, ranks_per_node=1, cpu_bind=None, env={"V": value})
    cwd = f"/lus/dir {value}"
    for argv in ssh_fanout(req, cwd=cwd):
        assert argv[:4] == ["ssh", "-o", "BatchMode=yes", argv[3]]
        assert len(argv) == 5  # the remote part is one argument
        assert shlex.split(argv[4]) == ["cd", cwd, "&&", "exec", "env", f"V={value}", *command]
        assert_parses(argv[4])
        assert_parses(shlex.join(argv))
        assert shlex.split(shlex.join(argv)) == argv


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("name", ["mpich", "openmpi", "srun", "local"])
def test_rendered_lines_parse_and_round_trip(name: str, value: str) -> None:
    command = ["prog", value]
    if name == "local":
        req = LaunchRequest(command=command, nodes=1, ranks_per_node=1, env={"V": value})
    else:
        req = request(command=command, cpu_bind=value, env={"V": value})
    argv = LAUNCHERS[name](req)
    assert argv[-2:] == command
    line = shlex.join(argv)
    assert_parses(line)
    assert shlex.split(line) == argv


def test_remote_command_without_cwd_has_no_cd() -> None:
    req = request(command=["echo", "$(id)"], ranks_per_node=1, cpu_bind=None, env={})
    assert remote_command(req) == "exec echo '$(id)'"


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"nodes": 0}, "at least 1"),
        ({"ranks_per_node": 0}, "at least 1"),
        ({"hosts": ("a",)}, "1 host.*2 node.*nodes=1"),
        ({"command": []}, "empty"),
        ({"command": ["-x", "prog"]}, "must start with a program"),
        ({"command": ["A=1", "prog"]}, "must start with a program"),
        ({"env": {"BAD NAME": "1"}}, "BAD NAME"),
        ({"env": {"1X": "1"}}, "1X"),
        ({"env": {"A=B": "1"}}, "A=B"),
        ({"env": {"V": "a\0b"}}, "NUL"),
        ({"hosts": ("ok", "has space")}, "has space"),
        ({"hosts": ("ok", "; rm -rf /")}, "not a host name"),
        ({"hosts": ("ok", "-oProxyCommand=touch /tmp/pwned")}, "not a host name"),
        ({"hosts": ("ok", "$(touch /tmp/pwned)")}, "not a host name"),
        ({"hosts": ("ok", "a,b")}, "not a host name"),
        ({"hosts": ("ok", "a:4")}, "not a host name"),
    ],
)
def test_invalid_requests(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(HardwareError, match=match):
        request(**overrides)


def test_ssh_needs_hosts_one_rank_and_no_binding() -> None:
    with pytest.raises(HardwareError, match="host list"):
        ssh_fanout(request(hosts=(), ranks_per_node=1, cpu_bind=None))
    with pytest.raises(HardwareError, match="one process per host"):
        ssh_fanout(request(cpu_bind=None))
    with pytest.raises(HardwareError, match="cannot bind"):
        ssh_fanout(request(ranks_per_node=1))


def test_local_is_one_process_on_one_node() -> None:
    with pytest.raises(HardwareError, match="one process"):
        local(request(cpu_bind=None))
    with pytest.raises(HardwareError, match="one process"):
        local(request(nodes=1, hosts=(), cpu_bind=None))
    with pytest.raises(HardwareError, match="cannot bind"):
        local(request(nodes=1, ranks_per_node=1, hosts=()))


def test_user_at_host_is_accepted_for_ssh() -> None:
    req = request(nodes=1, ranks_per_node=1, hosts=("me@node1",), cpu_bind=None, env={})
    assert ssh_fanout(req)[0][3] == "me@node1"
