"""Whether a cluster is what was asked for, decided from the GCS's node list alone.

Ready means: every expected host has exactly one live node with our cluster's label, the
GPUs (and CPUs, when fixed) it was started with, and the head's versions; no other node
claims the cluster. Anything else is a `NodeProblem` naming the host and what differs.
A version mismatch is final (waiting will not change a node's labels); a host that has not
joined yet may still join before the deadline. Pure: `up` and `status` feed it live nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpcinfer.raycluster.fingerprint import Fingerprint, differences, label_value
from hpcinfer.raycluster.gcs import LiveNode


@dataclass(frozen=True)
class ExpectedNode:
    """A host the cluster must have, with the resources it was started with."""

    host: str
    gpus: float
    cpus: float | None = None


@dataclass(frozen=True)
class NodeProblem:
    """What is wrong with one host (or with a node no host owns)."""

    host: str
    what: str
    final: bool = False  # waiting will not fix it (a version mismatch)

    def __str__(self) -> str:
        return f"{self.host}: {self.what}"


Reachable = Callable[[LiveNode], bool]


def _ours(node: LiveNode, cluster: str) -> bool:
    return node.cluster == label_value(cluster)


def reference_fingerprint(
    expected: Sequence[ExpectedNode], nodes: Sequence[LiveNode]
) -> Fingerprint | None:
    """The fingerprint every node must have: the head's (the first expected host), else the
    first live node's; None while no node is there."""
    alive = [n for n in nodes if n.alive]
    head_label = label_value(expected[0].host) if expected else None
    for node in alive:
        if node.host == head_label:
            return node.fingerprint
    return alive[0].fingerprint if alive else None


def _node_problems(
    want: ExpectedNode, mine: list[LiveNode], reference: Fingerprint | None, reachable: Reachable
) -> list[NodeProblem]:
    alive = [n for n in mine if n.alive]
    if not alive:
        what = "dead (its raylet is gone; Ray marked the node DEAD)" if mine else "not joined"
        return [NodeProblem(want.host, what)]
    if len(alive) > 1:
        return [NodeProblem(want.host, f"joined {len(alive)} times (one node expected)")]
    node = alive[0]
    found: list[NodeProblem] = []
    if not reachable(node):
        found.append(
            NodeProblem(
                want.host,
                f"raylet not answering at {node.address}:{node.node_manager_port} (killed or "
                "hung; Ray has not marked it dead yet)",
            )
        )
    if node.gpus != want.gpus:
        found.append(NodeProblem(want.host, f"{node.gpus:g} GPUs (expected {want.gpus:g})"))
    if want.cpus is not None and node.cpus != want.cpus:
        found.append(NodeProblem(want.host, f"{node.cpus:g} CPUs (expected {want.cpus:g})"))
    if reference is not None and (diff := differences(reference, node.fingerprint)):
        found.append(NodeProblem(want.host, "versions differ: " + ", ".join(diff), final=True))
    return found


def assess(
    expected: Sequence[ExpectedNode],
    nodes: Sequence[LiveNode],
    cluster: str,
    reachable: Reachable | None = None,
) -> list[NodeProblem]:
    """Every problem between the expected hosts and the live nodes; [] means ready."""
    ours = [n for n in nodes if _ours(n, cluster)]
    reference = reference_fingerprint(expected, ours)
    check: Reachable = reachable or (lambda _node: True)
    problems: list[NodeProblem] = []
    for want in expected:
        mine = [n for n in ours if n.host == label_value(want.host)]
        problems += _node_problems(want, mine, reference, check)
    known = {label_value(want.host) for want in expected}
    for node in ours:
        if node.alive and node.host not in known:
            problems.append(
                NodeProblem(node.host or node.address, "joined the cluster but is not expected")
            )
    return problems


def summary(problems: Sequence[NodeProblem]) -> str:
    """The problems as one line each, for an error message."""
    return "\n".join(f"  {problem}" for problem in problems)
