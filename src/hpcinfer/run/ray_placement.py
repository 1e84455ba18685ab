"""Which Ray actors a job on a Ray cluster starts: one per device group of each node.

Pure: decided from the cluster's live nodes (their declared resources and hpcinfer's node
label) and the spec, so the rule is tested without a cluster. A node that declares GPUs gets
one actor per `tensor_parallel_size` of them; a cluster without GPUs gets one actor per node
(the worker takes the node's cores, as `--launcher mpi` does with one rank per node).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hpcinfer.errors import HardwareError

NODE_LABEL = "hpcinfer-node"
"""The label `hpcinfer ray up` puts on every node: its host as named in the allocation."""


@dataclass(frozen=True)
class RayNode:
    """One live node of the cluster, as the scheduler sees it."""

    node_id: str
    host: str
    address: str
    gpus: int
    cpus: int


@dataclass(frozen=True)
class ActorSlot:
    """One actor to start: where, with which resources, and which device group of its node
    (`slot` of `node_slots`) its worker binds to."""

    index: int
    node: RayNode
    slot: int
    node_slots: int
    gpus: int
    cpus: int

    def resources(self) -> dict[str, Any]:
        """The actor's `.options(...)` resources."""
        return {"num_gpus": self.gpus, "num_cpus": self.cpus}


def ray_nodes(infos: list[dict[str, Any]]) -> list[RayNode]:
    """The live nodes of `ray.nodes()`, in a stable order (the head's allocation order is
    not known here: by host label, then address)."""
    nodes = []
    for info in infos:
        if not info.get("Alive"):
            continue
        resources = info.get("Resources") or {}
        labels = info.get("Labels") or {}
        address = str(info.get("NodeManagerAddress", ""))
        host = str(labels.get(NODE_LABEL) or info.get("NodeManagerHostname") or address)
        nodes.append(
            RayNode(
                node_id=str(info["NodeID"]),
                host=host,
                address=address,
                gpus=int(resources.get("GPU", 0)),
                cpus=int(resources.get("CPU", 0)),
            )
        )
    return sorted(nodes, key=lambda n: (n.host, n.address))


def plan_actors(
    nodes: list[RayNode], *, tp: int, use_gpus: bool, count: int | None = None
) -> list[ActorSlot]:
    """One actor per device group of every node: GPU groups of `tp` when `use_gpus` (the
    engine runs on GPUs and the cluster declares them), else one per node. `count`
    (workers.count) keeps the first that many, slot 0 of every node before slot 1 of any,
    so a smaller job still spreads over the nodes; on CPU a larger count puts several
    actors on a node, splitting its cores between them."""
    if not nodes:
        raise HardwareError("the Ray cluster has no live node; check it with `hpcinfer ray status`")
    per_node: list[list[ActorSlot]] = []
    cpu_groups = -(-(count or 1) // len(nodes))  # ceil: enough actors per node for count
    for node in nodes:
        groups = node.gpus // tp if use_gpus else cpu_groups
        gpus, cpus = (tp if use_gpus else 0), (1 if node.cpus >= 1 else 0)
        per_node.append([ActorSlot(0, node, s, groups, gpus, cpus) for s in range(groups)])
    if not any(per_node):
        sizes = ", ".join(f"{n.host}: {n.gpus}" for n in nodes)
        raise HardwareError(
            f"no node of the Ray cluster has {tp} GPUs for one engine at --tp {tp} "
            f"(GPUs per node: {sizes}); lower --tp, or bring the cluster up with more "
            "--gpus-per-node"
        )
    ordered = [slot for group in _round_robin(per_node) for slot in group]
    if count is not None:
        ordered = ordered[:count]
    if not use_gpus:  # the node's cores are split between the actors it really runs
        on_node = Counter(a.node.node_id for a in ordered)
        ordered = [dataclasses.replace(a, node_slots=on_node[a.node.node_id]) for a in ordered]
    return [dataclasses.replace(actor, index=i) for i, actor in enumerate(ordered)]


def _round_robin(per_node: list[list[ActorSlot]]) -> list[list[ActorSlot]]:
    """Slot 0 of every node, then slot 1 of every node, ..."""
    rounds = max((len(slots) for slots in per_node), default=0)
    return [[slots[i] for slots in per_node if i < len(slots)] for i in range(rounds)]


def slot_of_gpus(gpu_ids: list[Any], tp: int, node_slots: int, planned: int) -> int:
    """The device group of the GPUs Ray gave an actor (group k holds GPUs k*tp..k*tp+tp-1),
    so the worker binds to the very GPUs Ray counts as taken; the planned slot where Ray's
    ids are not one such group (no GPUs, or ids that are not integers)."""
    try:
        ids = sorted(int(i) for i in gpu_ids)
    except (TypeError, ValueError):
        return planned
    if len(ids) != tp or not ids or ids != list(range(ids[0], ids[0] + tp)) or ids[0] % tp:
        return planned
    slot = ids[0] // tp
    return slot if slot < node_slots else planned
