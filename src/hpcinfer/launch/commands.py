"""Launchers as pure functions: the command each rank runs -> the command that starts them.

No I/O and no shell here: every function returns an argv list, so a caller can run it
directly or render it into a job script with ``shlex.join`` (which quotes every token).
The one place a shell parses our values is the remote side of ``ssh``; that argument is
built with ``shlex.join``/``shlex.quote``, so spaces, quotes, ``$(...)`` and ``; rm -rf /``
in any value stay inert (assuming a POSIX shell as the remote login shell).

Environment for the ranks travels as ``env K=V ... cmd`` in front of the rank command,
except for Open MPI, whose ``-x K=V`` is well defined. ``env`` is the one form that means
the same under every launcher: Hydra spells it ``-genv K V``, PALS ``--env K=V``, and
srun's ``--export=ALL,K=V`` splits values at commas (``ZE_AFFINITY_MASK=0,1`` would
arrive as ``0``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hpcinfer.errors import HardwareError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Host names, optionally user@host for ssh. No leading '-' (it would be read as an option),
# no ',' or ':' (launchers use them as separators), no whitespace or shell syntax.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*")


@dataclass(frozen=True)
class LaunchRequest:
    """What to start where; checked on construction so every launcher gets a sane one."""

    command: list[str]  # what each rank runs
    nodes: int
    ranks_per_node: int
    hosts: tuple[str, ...] = ()  # optional explicit host list, one per node
    cpu_bind: str | None = None  # passed to the launcher as is: "depth", "list:0-7:8-15", "core"
    env: dict[str, str] = field(default_factory=dict)  # exported to every rank

    def __post_init__(self) -> None:
        if not self.command:
            raise HardwareError("nothing to launch: the command is empty")
        if self.command[0].startswith("-") or "=" in self.command[0]:
            raise HardwareError(
                f"the command starts with {self.command[0]!r}; it must start with a program "
                "(put launcher options in the request, variables in env)"
            )
        if self.nodes < 1 or self.ranks_per_node < 1:
            raise HardwareError(
                f"cannot launch {self.nodes} node(s) x {self.ranks_per_node} rank(s) per node; "
                "both must be at least 1"
            )
        if self.hosts and len(self.hosts) != self.nodes:
            raise HardwareError(
                f"{len(self.hosts)} host(s) given for {self.nodes} node(s); pass exactly one "
                f"host per node, or nodes={len(self.hosts)}"
            )
        for host in self.hosts:
            if not _HOST.fullmatch(host):
                raise HardwareError(
                    f"host {host!r} is not a host name; use names like 'nid001' or "
                    "'user@node1' (letters, digits, '.', '_', '-', '@')"
                )
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise HardwareError(
                    f"environment variable name {name!r} is invalid; use letters, digits "
                    "and '_', not starting with a digit"
                )
        values = [*self.command, *self.env.values(), self.cpu_bind or ""]
        if any("\0" in value for value in values):
            raise HardwareError("a command, environment value or cpu_bind contains NUL")

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node


def _with_env(req: LaunchRequest) -> list[str]:
    """The rank command, behind ``env K=V ...`` when there is anything to export."""
    if not req.env:
        return list(req.command)
    return ["env", *(f"{k}={v}" for k, v in req.env.items()), *req.command]


def mpiexec_mpich(req: LaunchRequest) -> list[str]:
    """MPICH/Hydra and Aurora's PALS mpiexec.

    ``--cpu-bind`` is PALS syntax ("depth", "list:..."); Hydra binds with ``-bind-to``, so
    leave cpu_bind unset there.
    """
    argv = ["mpiexec", "-n", str(req.ranks), "-ppn", str(req.ranks_per_node)]
    if req.hosts:
        argv += ["--hosts", ",".join(req.hosts)]
    if req.cpu_bind:
        argv += ["--cpu-bind", req.cpu_bind]
    return argv + _with_env(req)


def mpiexec_openmpi(
    req: LaunchRequest, as_root: bool = False, oversubscribe: bool = False
) -> list[str]:
    """Open MPI's mpirun; cpu_bind goes to ``--bind-to`` ("core", "hwthread", "none", ...).

    ``as_root`` adds ``--allow-run-as-root``, which is enough on its own (the
    OMPI_ALLOW_RUN_AS_ROOT variables are the alternative, not a complement); containers
    that run as root need it. ``oversubscribe`` lets more ranks than detected slots run.
    """
    argv = ["mpirun", "-n", str(req.ranks), "--map-by", f"ppr:{req.ranks_per_node}:node"]
    if req.hosts:
        argv += ["--host", ",".join(f"{h}:{req.ranks_per_node}" for h in req.hosts)]
    if req.cpu_bind:
        argv += ["--bind-to", req.cpu_bind]
    if oversubscribe:
        argv.append("--oversubscribe")
    if as_root:
        argv.append("--allow-run-as-root")
    for key, value in req.env.items():
        argv += ["-x", f"{key}={value}"]
    return argv + list(req.command)


def srun(req: LaunchRequest) -> list[str]:
    """Slurm's srun inside an allocation; cpu_bind is srun's (--cpu-bind=cores, map_cpu:...)."""
    argv = ["srun", "--nodes", str(req.nodes), "--ntasks-per-node", str(req.ranks_per_node)]
    if req.hosts:
        argv += ["--nodelist", ",".join(req.hosts)]
    if req.cpu_bind:
        argv.append(f"--cpu-bind={req.cpu_bind}")
    return argv + _with_env(req)


def remote_command(req: LaunchRequest, cwd: str | None = None) -> str:
    """The one string a remote shell runs: ``cd DIR && exec env K=V ... cmd``, all quoted.

    ``exec`` replaces the remote shell, so the command is the process ssh's session owns.
    """
    line = shlex.join(["exec", *_with_env(req)])
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def ssh_fanout(
    req: LaunchRequest, ssh: str | Sequence[str] = "ssh", cwd: str | None = None
) -> list[list[str]]:
    """One ssh command per host, each starting the command once (as the Aurora vLLM
    server scripts start one server per host).

    ``ssh`` is the program, or an argv prefix with its options (``["ssh", "-F", cfg]``);
    each command ends with ``HOST REMOTE``. ``cwd`` is where the command runs (an ssh
    session otherwise starts in $HOME); pass the job's directory on the shared file system.
    ssh starts one process per host and binds nothing, so several ranks per node or
    cpu_bind need an MPI launcher or srun.
    """
    prefix = [ssh] if isinstance(ssh, str) else list(ssh)
    if not prefix:
        raise HardwareError("the ssh launcher needs an ssh program; got an empty command")
    if not req.hosts:
        raise HardwareError(
            "the ssh launcher needs the host list; pass hosts (e.g. read_allocation().hosts)"
        )
    if req.ranks_per_node != 1:
        raise HardwareError(
            f"ssh starts one process per host, not {req.ranks_per_node}; use ranks_per_node=1 "
            "or an MPI launcher (mpich, openmpi) or srun"
        )
    if req.cpu_bind:
        raise HardwareError(
            "the ssh launcher cannot bind CPUs; drop cpu_bind or use mpich/openmpi/srun"
        )
    remote = remote_command(req, cwd)
    return [[*prefix, "-o", "BatchMode=yes", host, remote] for host in req.hosts]


def local(req: LaunchRequest) -> list[str]:
    """The command itself, on this node: one process, so one node and one rank."""
    if req.nodes > 1 or req.ranks_per_node > 1:
        raise HardwareError(
            f"the local launcher runs one process on this node, not {req.nodes} node(s) x "
            f"{req.ranks_per_node} rank(s); use mpich, openmpi, srun or ssh"
        )
    if req.cpu_bind:
        raise HardwareError("the local launcher cannot bind CPUs; drop cpu_bind")
    return _with_env(req)


Launcher = Callable[..., list[str] | list[list[str]]]

LAUNCHERS: dict[str, Launcher] = {
    "mpich": mpiexec_mpich,
    "openmpi": mpiexec_openmpi,
    "srun": srun,
    "ssh": ssh_fanout,
    "local": local,
}
