"""`hpcinfer ray status`: the live cluster against the one `up` recorded.

One row per recorded host (and one per node nobody expected): its address, state, GPUs,
CPUs and versions as the GCS reports them, and what is wrong with it. A worker whose
raylet was killed is named at once (its node-manager port no longer answers), before Ray's
own health check marks the node dead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.errors import RayClusterError
from hpcinfer.raycluster.cluster_file import RayClusterFile, cluster_path, load_cluster
from hpcinfer.raycluster.fingerprint import KEYS, label_value
from hpcinfer.raycluster.gcs import LiveNode, live_nodes, raylet_answers
from hpcinfer.raycluster.readiness import ExpectedNode, NodeProblem, assess

GCS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class NodeRow:
    """One host in the status table."""

    host: str
    expected_address: str | None
    address: str | None
    state: str  # alive, dead, missing, unexpected
    gpus: float | None
    cpus: float | None
    versions: dict[str, str]
    problems: list[str]


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster as recorded against the cluster as it is."""

    name: str
    address: str
    cluster_file: str
    head_answers: bool
    rows: list[NodeRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.head_answers and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "cluster_file": self.cluster_file,
            "ok": self.ok,
            "head_answers": self.head_answers,
            "problems": self.problems,
            "nodes": [row.__dict__ for row in self.rows],
        }


def _row(host: str, expected: str | None, mine: list[LiveNode], problems: list[str]) -> NodeRow:
    alive = [n for n in mine if n.alive]
    node = alive[0] if alive else (mine[-1] if mine else None)
    state = "alive" if alive else "dead" if mine else "missing"
    return NodeRow(
        host=host,
        expected_address=expected,
        address=node.address if node else None,
        state=state if expected is not None else "unexpected",
        gpus=node.gpus if node else None,
        cpus=node.cpus if node else None,
        versions=dict(node.fingerprint) if node else {k: "" for k in KEYS},
        problems=problems,
    )


def cluster_status(cluster: RayClusterFile, where: Path) -> ClusterStatus:
    """Compare the live cluster with `cluster`; never raises for a cluster that is down."""
    try:
        nodes = live_nodes(cluster.address, GCS_TIMEOUT_S, cluster.cluster_id)
    except RayClusterError as exc:
        rows = [_row(r.host, r.address, [], ["head not answering"]) for r in cluster.nodes]
        return ClusterStatus(cluster.name, cluster.address, str(where), False, rows, [str(exc)])
    expected = [
        ExpectedNode(r.host, r.gpus, r.cpus if cluster.cpus_per_node else None)
        for r in cluster.nodes
    ]
    found: list[NodeProblem] = assess(expected, nodes, cluster.name, raylet_answers)
    rows = []
    for record in cluster.nodes:
        mine = [n for n in nodes if n.host == label_value(record.host)]
        own = [p.what for p in found if p.host == record.host]
        rows.append(_row(record.host, record.address, mine, own))
    known = {r.host for r in cluster.nodes}
    for problem in found:
        if problem.host not in known:
            rows.append(_row(problem.host, None, [], [problem.what]))
    return ClusterStatus(
        cluster.name, cluster.address, str(where), True, rows, [str(p) for p in found]
    )


def ray_status(
    path: Path | str | None = None, name: str | None = None, env: Mapping[str, str] | None = None
) -> ClusterStatus:
    """The status of the cluster recorded at `path` (None: the default file for `name`)."""
    where = cluster_path(path, name, env)
    return cluster_status(load_cluster(where), where)
