"""Every port a Ray node opens, taken from one block per cluster.

Ray picks several ports itself unless told (the client server on 10001, the dashboard on
8265, agents on random ports): two users' clusters on shared nodes then collide. Every
port is given explicitly here, from a block derived from the cluster's name (or
`--port-base`), below Linux's ephemeral range (32768-60999) so an outgoing connection
never holds one of them.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from hpcinfer.errors import SpecError

BLOCK = 200
"""Ports per cluster: the named ports, then the worker ports."""
WORKER_OFFSET = 20
"""Worker ports start this far into the block (the named ports come first)."""
FIRST_BASE = 20000
LAST_BASE = 32768 - BLOCK
_BLOCKS = (LAST_BASE - FIRST_BASE) // BLOCK


class RayPorts(BaseModel):
    """The ports of one cluster's nodes (the same on every node)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: int
    gcs: int
    node_manager: int
    object_manager: int
    client_server: int
    dashboard: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    min_worker: int
    max_worker: int

    def named(self) -> dict[str, int]:
        """The single ports by name (the worker range left out)."""
        return {
            k: v
            for k, v in self.model_dump().items()
            if k not in ("base", "min_worker", "max_worker")
        }


def port_base_for(name: str) -> int:
    """The block's first port for cluster `name`: stable, spread over 20000-32567."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return FIRST_BASE + (digest % _BLOCKS) * BLOCK


def ray_ports(base: int) -> RayPorts:
    """The ports of the block starting at `base`; a base whose block leaves 1024-65535 is
    refused, naming the range that works."""
    if not 1024 <= base <= 65536 - BLOCK:
        raise SpecError(
            f"--port-base {base}: the cluster uses {BLOCK} ports from there; choose a base "
            f"between 1024 and {65536 - BLOCK} (below 32768-{32768 + BLOCK} stays clear of "
            "Linux's ephemeral ports)"
        )
    return RayPorts(
        base=base,
        gcs=base,
        node_manager=base + 1,
        object_manager=base + 2,
        client_server=base + 3,
        dashboard=base + 4,
        dashboard_agent_listen=base + 5,
        dashboard_agent_grpc=base + 6,
        runtime_env_agent=base + 7,
        metrics_export=base + 8,
        min_worker=base + WORKER_OFFSET,
        max_worker=base + BLOCK - 1,
    )
