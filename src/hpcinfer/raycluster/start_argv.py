"""The `ray start` command line of one node, as a pure function of what it is told.

Every port is given (see `ports`), the dashboard is off (its head process still binds the
dashboard port, so that one is given too), usage statistics are off, and the labels say
which host and cluster the node belongs to and which versions it runs (see `fingerprint`).
Head-only options (the GCS port, the client server, the dashboard) go to the head only.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.raycluster.ports import RayPorts


@dataclass(frozen=True)
class NodeStart:
    """What one node's `ray start` needs."""

    ray: str  # the `ray` program
    address: str  # this node's IP address
    temp_dir: Path
    ports: RayPorts
    labels: Mapping[str, str]
    gpus: int
    cpus: int | None = None
    head_address: str | None = None  # "ip:port" of the GCS; None: this node is the head


def ray_start_argv(start: NodeStart) -> list[str]:
    """`ray start ...` for a head (head_address None) or a worker; argv, nothing to quote."""
    ports = start.ports
    argv = [start.ray, "start"]
    if start.head_address is None:
        argv += [
            "--head",
            f"--port={ports.gcs}",
            f"--ray-client-server-port={ports.client_server}",
            "--include-dashboard=false",
            f"--dashboard-port={ports.dashboard}",
        ]
    else:
        argv.append(f"--address={start.head_address}")
    argv += [
        f"--node-ip-address={start.address}",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        f"--temp-dir={start.temp_dir}",
        f"--num-gpus={start.gpus}",
    ]
    if start.cpus is not None:
        argv.append(f"--num-cpus={start.cpus}")
    argv += [
        "--disable-usage-stats",
        f"--labels={json.dumps(dict(start.labels), sort_keys=True, separators=(',', ':'))}",
    ]
    return argv


def shown(argv: list[str]) -> str:
    """The command line as a shell would take it (every token quoted), for logs and errors."""
    return shlex.join(argv)
