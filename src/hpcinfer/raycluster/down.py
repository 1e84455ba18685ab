"""`hpcinfer ray down`: stop every node of the cluster, check nothing is left, forget it.

Each node stops only the processes of its own temp dir (`node_processes`), never with
`ray stop`; all nodes at once, each bounded (SIGTERM, a wait, SIGKILL). The cluster file is
removed only when every node reported that nothing of the cluster is left on it, so a
`down` that could not reach a host can be run again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.errors import RayClusterError
from hpcinfer.raycluster.cluster_file import (
    RayClusterFile,
    cluster_path,
    launch_log_dir,
    load_cluster,
)
from hpcinfer.raycluster.gcs import tcp_answers
from hpcinfer.raycluster.launching import (
    hpcinfer_argv,
    node_launches,
    settle,
    start_launches,
)
from hpcinfer.raycluster.node_processes import TERM_GRACE_S

STOP_DEADLINE_S = 90.0
"""How long the node stops of one `down` may take together (each is bounded far below)."""


@dataclass(frozen=True)
class DownReport:
    """What `down` did: the hosts stopped and the processes each had."""

    name: str
    hosts: list[str]
    stopped: dict[str, int]


def _node_stop_argv(root: Path) -> object:
    def argv(hosts: Sequence[str], _offset: int) -> list[str]:
        args = ["ray", "node-stop", "--temp-root", str(root), "--grace", f"{TERM_GRACE_S:g}"]
        for host in hosts:
            args += ["--host", host]
        return hpcinfer_argv(*args)

    return argv


def stop_hosts(
    launcher: str,
    hosts: Sequence[str],
    root: Path,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    tolerate: bool = False,
) -> dict[str, int]:
    """Run node-stop on every host at once; {host: processes stopped}. RayClusterError
    naming the hosts where it failed, unless `tolerate` (a failed `up` cleaning up)."""
    launches = node_launches(launcher, hosts, _node_stop_argv(root), env)  # type: ignore[arg-type]
    running = start_launches(launches, log_dir, env, "stop")
    settle(running, STOP_DEADLINE_S)
    stopped: dict[str, int] = {}
    for launch in running:
        for record in launch.records():
            stopped[str(record["host"])] = int(record.get("stopped", 0))
    failed = [launch.failure() for launch in running if launch.poll() != 0]
    missing = [h for h in hosts if h not in stopped]
    if (failed or missing) and not tolerate:
        raise RayClusterError(
            "could not stop Ray on every host (the cluster file is kept: run `hpcinfer ray "
            "down` again once they answer):\n"
            + "\n".join(f"  {f}" for f in failed or [f"{h}: no answer" for h in missing])
        )
    return stopped


def ray_down(
    path: Path | str | None = None, name: str | None = None, env: Mapping[str, str] | None = None
) -> DownReport:
    """Stop the cluster recorded at `path` (None: the default file for `name`) and remove
    its file once no process of it is left on any host."""
    env = dict(os.environ if env is None else env)
    where = cluster_path(path, name, env)
    cluster: RayClusterFile = load_cluster(where)
    with tempfile.TemporaryDirectory(prefix="hpcinfer-ray-down-") as logs:
        # workers first: a raylet whose head is gone first retries it for a while
        stopped = stop_hosts(
            cluster.launcher, cluster.hosts[1:], Path(cluster.temp_root), env, Path(logs)
        )
        stopped |= stop_hosts(
            cluster.launcher, cluster.hosts[:1], Path(cluster.temp_root), env, Path(logs)
        )
    host, port = cluster.gcs_host_port()
    if tcp_answers(host, port, 1.0):
        raise RayClusterError(
            f"the head's port {cluster.address} still answers after every node stopped; "
            "another program holds it? The cluster file is kept"
        )
    where.unlink(missing_ok=True)
    shutil.rmtree(launch_log_dir(where), ignore_errors=True)
    return DownReport(cluster.name, cluster.hosts, stopped)
