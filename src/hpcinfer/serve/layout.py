"""How one server is laid out: TP x PP x DP ranks over how many nodes, and which hosts of the
allocation each server takes. Pure: decided (or refused) before anything starts.

A server holds TP x PP x DP ranks (one device each). On GPUs it spans as many nodes as its
ranks need (TP8 x PP2 on 8-GPU nodes: 2 nodes); on CPU a node is one device group, so with
several hosts a server puts one rank on each node (TP=2 spans 2 nodes), and on a single host
it stays on that host as before. `--nodes-per-server` chooses for itself. Servers over an
allocation take its hosts in order, `nodes` at a time: 4 nodes at 2 per server are 2 servers
(hosts 0-1 and 2-3), the first host of each runs the API server (node rank 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hpcinfer.cluster.allocation import RankInfo
from hpcinfer.cluster.hardware import HardwareProfile
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec


@dataclass(frozen=True)
class NodeShape:
    """What a layout needs of a node: its device count, whether those are cores, its name
    (a hardware profile's, or a Ray cluster's declared GPUs per node)."""

    name: str
    devices: int
    is_cpu: bool = False

    @classmethod
    def of(cls, profile: HardwareProfile) -> NodeShape:
        return cls(profile.name, profile.devices_per_node, profile.is_cpu)


@dataclass(frozen=True)
class ServerLayout:
    """One server's parallelism and the nodes it spans."""

    tp: int
    pp: int
    dp: int
    expert_parallel: bool
    nodes: int
    backend: str

    @property
    def world(self) -> int:
        """Ranks (devices) of one server: TP x PP x DP."""
        return self.tp * self.pp * self.dp

    @property
    def ranks_per_node(self) -> int:
        return self.world // self.nodes

    @property
    def spans_nodes(self) -> bool:
        return self.nodes > 1

    def describe(self) -> str:
        """'TP=2 x PP=1 x DP=1 over 2 nodes (1 rank per node)'."""
        per = self.ranks_per_node
        return (
            f"TP={self.tp} x PP={self.pp} x DP={self.dp} over {count(self.nodes, 'node')} "
            f"({count(per, 'rank')} per node)"
        )

    def groups(self, hosts: Sequence[str]) -> list[tuple[str, ...]]:
        """The hosts of each server, in allocation order (`check_allocation` first)."""
        return [tuple(hosts[i : i + self.nodes]) for i in range(0, len(hosts), self.nodes)]

    def place_rank(self, rank: int) -> tuple[int, int]:
        """(server, node rank within it) of the serve rank `rank` (one rank per node)."""
        return rank // self.nodes, rank % self.nodes


def count(n: int, word: str) -> str:
    """'1 node', '2 nodes'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def nodes_of(rank: RankInfo | None) -> int:
    """The nodes the serve ranks of this launch run on (they split nodes evenly)."""
    return 1 if rank is None else max(1, rank.world_size // max(1, rank.local_size))


def plan_layout(spec: JobSpec, node: HardwareProfile | NodeShape, hosts: int) -> ServerLayout:
    """The layout of every server of `spec` on `hosts` nodes like `node`, or a SpecError
    naming the numbers and the fix."""
    shape = node if isinstance(node, NodeShape) else NodeShape.of(node)
    serve = spec.serve
    tp, pp = spec.engine.tensor_parallel_size, serve.pipeline_parallel_size
    dp = serve.data_parallel_size
    world = tp * pp * dp
    sizes = f"TP x PP x DP = {tp} x {pp} x {dp} = {world}"
    per_node = shape.devices
    unit = "cores" if shape.is_cpu else "devices"
    nodes = serve.nodes_per_server
    if nodes is None and shape.is_cpu:
        nodes = world if hosts > 1 else 1  # a node is one device group
    elif nodes is None:
        nodes = max(1, math.ceil(world / per_node))
    if world % nodes:
        raise SpecError(
            f"{sizes} ranks do not divide over {count(nodes, 'node')} per server: pass "
            f"--nodes-per-server with a divisor of {world} ({_divisors(world)})"
        )
    local = world // nodes
    if local > per_node:
        fits = math.ceil(world / per_node)
        raise SpecError(
            f"{sizes} ranks over {count(nodes, 'node')} put {local} on each node; "
            f"{shape.name} has {per_node} {unit} per node: pass --nodes-per-server {fits} "
            f"(or more), or a smaller TP x PP x DP"
        )
    layout = ServerLayout(tp, pp, dp, serve.expert_parallel, nodes, serve.backend)
    if layout.spans_nodes and serve.servers is not None:
        raise SpecError(
            f"--servers {serve.servers} counts servers per node, but each server spans "
            f"{count(nodes, 'node')} ({layout.describe()}): leave --servers unset; the "
            "allocation's nodes make the servers"
        )
    return layout


def check_allocation(layout: ServerLayout, hosts: Sequence[str]) -> None:
    """Refuse an allocation whose nodes do not make whole servers."""
    if not layout.spans_nodes:
        return
    have = len(hosts)
    if have < layout.nodes or have % layout.nodes:
        fit = max(layout.nodes, have // layout.nodes * layout.nodes)
        raise SpecError(
            f"each server spans {count(layout.nodes, 'node')} ({layout.describe()}), but the "
            f"allocation has {count(have, 'node')} ({', '.join(hosts)}), not a multiple of "
            f"{layout.nodes}: run on a multiple of {layout.nodes} nodes (e.g. {fit}), or pass "
            f"--nodes-per-server with a divisor of {have} ({_divisors(have)})"
        )
