"""`hpcinfer ray down`: stop every node of the cluster, check nothing is left, forget it.

Each node stops only the processes of its own temp dir (`node_processes`), never with
`ray stop`; all nodes at once, each bounded (SIGTERM, a wait, SIGKILL). The workers are stopped
first (a raylet whose head is gone retries it for a while), then the head, always, even
when a worker failed. The cluster file is removed only when every node reported that
nothing of the cluster is left on it, so a `down` that could not reach a host can be run
again; `forget` removes it anyway once every host that answered stopped (a host that is
gone for good).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcinfer.errors import HardwareError, RayClusterError
from hpcinfer.raycluster.cluster_file import (
    RayClusterFile,
    cluster_path,
    launch_log_dir,
    load_cluster,
)
from hpcinfer.raycluster.gcs import split_address, tcp_answers
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
    forgotten: list[str] = field(default_factory=list)  # --forget: hosts that never answered


def _node_stop_argv(root: Path) -> object:
    def argv(hosts: Sequence[str], _offset: int) -> list[str]:
        args = ["ray", "node-stop", "--temp-root", str(root), "--grace", f"{TERM_GRACE_S:g}"]
        for host in hosts:
            args += ["--host", host]
        return hpcinfer_argv(*args)

    return argv


@dataclass
class StopResult:
    """What node-stop did on a set of hosts."""

    stopped: dict[str, int] = field(default_factory=dict)  # host -> processes, nothing left
    answered: set[str] = field(default_factory=set)  # hosts whose node-stop reported
    failures: list[str] = field(default_factory=list)  # why, naming the hosts

    def __or__(self, other: StopResult) -> StopResult:
        return StopResult(
            self.stopped | other.stopped,
            self.answered | other.answered,
            self.failures + other.failures,
        )


def stop_nodes(
    launcher: str, hosts: Sequence[str], root: Path, env: Mapping[str, str], log_dir: Path
) -> StopResult:
    """Run node-stop on every host at once, bounded; what each host reported."""
    result = StopResult()
    if not hosts:
        return result
    try:
        launches = node_launches(launcher, hosts, _node_stop_argv(root), env)  # type: ignore[arg-type]
        running = start_launches(launches, log_dir, env, "stop")
    except (HardwareError, RayClusterError) as exc:  # the launcher cannot run here
        result.failures = [f"{', '.join(hosts)}: {exc}"]
        return result
    settle(running, STOP_DEADLINE_S)
    for launch in running:
        for record in launch.records():
            host = str(record["host"])
            result.answered.add(host)
            if not record.get("left"):
                result.stopped[host] = int(record.get("stopped", 0))
    result.failures = [launch.failure() for launch in running if launch.poll() != 0]
    if not result.failures:  # every launch ended well, yet a host did not report
        result.failures = [f"{h}: no answer" for h in hosts if h not in result.stopped]
    return result


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
    result = stop_nodes(launcher, hosts, root, env, log_dir)
    if result.failures and not tolerate:
        raise RayClusterError(_could_not_stop(hosts, result))
    return result.stopped


def _could_not_stop(hosts: Sequence[str], result: StopResult) -> str:
    left = [h for h in hosts if h not in result.stopped]
    return (
        f"could not stop Ray on {', '.join(left) or 'every host'} (the cluster file is kept: "
        "run `hpcinfer ray down` again once they answer, or add --forget to drop hosts "
        "that are gone):\n" + "\n".join(f"  {f}" for f in result.failures)
    )


def _gcs_host_port(cluster: RayClusterFile) -> tuple[str, int]:
    """The head's GCS address; ("", 0) for a cluster whose `up` never reached it."""
    return split_address(cluster.address) if cluster.address else ("", 0)


def ray_down(
    path: Path | str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    forget: bool = False,
) -> DownReport:
    """Stop the cluster recorded at `path` (None: the default file for `name`) and remove
    its file once no process of it is left on any host (`forget`: on any host that
    answered; the others are named in the report)."""
    env = dict(os.environ if env is None else env)
    where = cluster_path(path, name, env)
    cluster: RayClusterFile = load_cluster(where, starting_ok=True)  # a killed `up`'s too
    root = Path(cluster.temp_root)
    with tempfile.TemporaryDirectory(prefix="hpcinfer-ray-down-") as logs:
        # workers first: a raylet whose head is gone first retries it for a while; the
        # head always, whatever the workers did
        result = stop_nodes(cluster.launcher, cluster.hosts[1:], root, env, Path(logs))
        result |= stop_nodes(cluster.launcher, cluster.hosts[:1], root, env, Path(logs))
    not_stopped = [h for h in cluster.hosts if h not in result.stopped]
    gone = [h for h in not_stopped if h not in result.answered]
    if not_stopped and not (forget and gone == not_stopped):
        raise RayClusterError(_could_not_stop(cluster.hosts, result))
    host, port = _gcs_host_port(cluster)
    if port and cluster.head_host not in gone and tcp_answers(host, port, 1.0):
        raise RayClusterError(
            f"the head's port {cluster.address} still answers after every node stopped; "
            "another program holds it? The cluster file is kept"
        )
    where.unlink(missing_ok=True)
    shutil.rmtree(launch_log_dir(where), ignore_errors=True)
    return DownReport(cluster.name, cluster.hosts, result.stopped, gone)
