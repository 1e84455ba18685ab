"""The one adapter over Ray's GCS client: the live nodes of a cluster, read without a driver.

`ray._raylet.GcsClient` answers in milliseconds and starts nothing (a `ray.init` driver
would register a job and start a core worker). Its constructor, though, waits 10-40 s for
a GCS that does not answer, so a plain TCP connection is tried first and a head that is
down is reported at once. Everything else reads `LiveNode`, never Ray's protobufs.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcinfer.errors import RayClusterError
from hpcinfer.raycluster.fingerprint import CLUSTER_LABEL, NODE_LABEL, Fingerprint, fingerprint_of

_ALIVE = 0  # GcsNodeInfo.GcsNodeState.ALIVE


@dataclass(frozen=True)
class LiveNode:
    """One node as the GCS knows it."""

    node_id: str
    host: str | None  # the hpcinfer-node label: the allocation's host name
    cluster: str | None  # the hpcinfer-cluster label
    address: str  # node_manager_address
    node_manager_port: int
    alive: bool
    head: bool
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    temp_dir: str = ""

    @property
    def fingerprint(self) -> Fingerprint:
        return fingerprint_of(self.labels)

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0.0))


def tcp_answers(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts a TCP connection at host:port within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _node(node_id: Any, info: Any) -> LiveNode:
    labels = {str(k): str(v) for k, v in dict(info.labels).items()}
    return LiveNode(
        node_id=node_id.hex() if hasattr(node_id, "hex") else str(node_id),
        host=labels.get(NODE_LABEL),
        cluster=labels.get(CLUSTER_LABEL),
        address=str(info.node_manager_address),
        node_manager_port=int(info.node_manager_port),
        alive=int(info.state) == _ALIVE,
        head=bool(info.is_head_node),
        resources={str(k): float(v) for k, v in dict(info.resources_total).items()},
        labels=labels,
        temp_dir=str(info.temp_dir),
    )


def live_nodes(address: str, timeout: float = 5.0, cluster_id: str | None = None) -> list[LiveNode]:
    """Every node the GCS at `address` ("ip:port") knows, alive or dead.

    RayClusterError when the GCS does not answer within `timeout` seconds."""
    if not tcp_answers(*split_address(address), timeout):
        raise RayClusterError(
            f"the Ray head at {address} does not answer (no TCP connection within "
            f"{timeout:g} s): the cluster is down or the address is wrong"
        )
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        client = GcsClient(address=address, cluster_id=cluster_id)
        infos = client.get_all_node_info(timeout=timeout)
    except Exception as exc:  # Ray's RpcError and friends: any failure is "no answer"
        raise RayClusterError(f"the Ray head at {address} does not answer: {exc}") from None
    return [_node(node_id, info) for node_id, info in infos.items()]


def cluster_id_of(address: str, timeout: float = 5.0) -> str:
    """The cluster id (hex) of the GCS at `address`, for `live_nodes(cluster_id=...)`."""
    if not tcp_answers(*split_address(address), timeout):
        raise RayClusterError(f"the Ray head at {address} does not answer")
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        return str(GcsClient(address=address).cluster_id.hex())
    except Exception as exc:
        raise RayClusterError(f"the Ray head at {address} does not answer: {exc}") from None


def split_address(address: str) -> tuple[str, int]:
    """("ip", port) of an "ip:port" GCS address; RayClusterError naming it otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"{address!r} is not a GCS address; expected ip:port")
    return host, int(port)


RAYLET_PROBE_S = 2.0


def raylet_answers(node: LiveNode) -> bool:
    """Whether the node's raylet accepts a connection (a dead raylet's node may still be
    listed alive for a while)."""
    return tcp_answers(node.address, node.node_manager_port, RAYLET_PROBE_S)
