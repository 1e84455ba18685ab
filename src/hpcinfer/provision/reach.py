"""How a cluster command reaches a node: ssh as the node's login, with hpcinfer's ssh command.

The ssh program and its options come from $HPCINFER_SSH (the ssh launcher's own reading of
it, e.g. "ssh -F ~/cluster/ssh_config"), else plain `ssh`; the target is `login@address`
from the cluster file; BatchMode, so a missing key fails at once instead of asking for a
password nobody will type. Every remote command is one shell string whose parts are quoted.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from hpcinfer.launch.rank_commands import ssh_command
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.cluster_file import Node
from hpcinfer.provision.state import DEFAULT_WORKDIR

SSH_UNREACHABLE = 255
"""ssh's own exit status when it could not reach the host (nothing ran there)."""
CONNECT_TIMEOUT_S = 10
"""How long ssh waits for a node to answer before giving up (exit 255), unless the user's
$HPCINFER_SSH options set ConnectTimeout themselves."""


def ssh_prefix(env: Mapping[str, str]) -> list[str]:
    """The ssh argv prefix ($HPCINFER_SSH split as a shell would, else `ssh`)."""
    return ssh_command(dict(env))


def login(cluster: Cluster, node: Node) -> str:
    return node.user or cluster.file.remote_user


def target(cluster: Cluster, node: Node) -> str:
    """`login@address`, as ssh and rsync take it."""
    return f"{login(cluster, node)}@{node.address}"


def connect_timeout_options(prefix: list[str]) -> list[str]:
    """`-o ConnectTimeout=N`, so that a node that does not answer fails in seconds instead
    of the TCP timeout; none when the ssh prefix already sets ConnectTimeout."""
    if any("connecttimeout" in word.lower() for word in prefix[1:]):
        return []
    return ["-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]


def ssh_argv(cluster: Cluster, node: Node, remote: str, env: Mapping[str, str]) -> list[str]:
    """ssh to `node` running the shell command `remote` there."""
    prefix = ssh_prefix(env)
    return [
        *prefix,
        *connect_timeout_options(prefix),
        "-o",
        "BatchMode=yes",
        target(cluster, node),
        remote,
    ]


SESSION_BOUND = (
    'exec 3>&2 2>/dev/null; set -m; (eval "$1") </dev/null 2>&3 3>&- & c=$!; '
    "{ cat >/dev/null; kill -TERM -- -$c; } 3>&- & w=$!; wait $c; s=$?; kill -- -$w; exit $s"
)
"""bash: run $1 in a process group of its own, and end that group when stdin closes. ssh
leaves a remote command running when the session drops (no terminal, no SIGHUP); a command
started through this ends with the ssh that started it, whose stdin must stay open (a pipe
held by the caller) while it should run."""


def session_bound(command: str) -> str:
    """The remote shell command running `command` (a shell command line) with bash, ended
    when the ssh session's stdin closes (see SESSION_BOUND); its exit status is the
    command's (143 when ended so)."""
    return f"bash -c {shlex.quote(SESSION_BOUND)} hpcinfer-cluster {shlex.quote(command)}"


@contextmanager
def held_stdin() -> Iterator[int]:
    """The read end of a pipe whose write end is held until the block ends: the stdin of an
    ssh running a `session_bound` command (or a forwarded one), which ends when it closes."""
    read_end, write_end = os.pipe()
    try:
        yield read_end
    finally:
        os.close(read_end)
        os.close(write_end)


def workdir(cluster: Cluster) -> str:
    """Where the project lives on the control node: `control.workdir`, else `hpcinfer`
    (relative: under the login's home, where an ssh session starts)."""
    return cluster.file.control.workdir or DEFAULT_WORKDIR


def home_path(relative: str) -> str:
    """A path under the remote home as a shell word: "$HOME"/quoted-rest."""
    return '"$HOME"/' + shlex.quote(relative)


def in_workdir(cluster: Cluster, command: str) -> str:
    """The shell command line `command` run in the project folder on the control node
    (made if missing: a command may come before the first sync)."""
    where = shlex.quote(workdir(cluster))
    return f"mkdir -p {where} && cd {where} && {command}"
