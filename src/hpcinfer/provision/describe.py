"""The cluster described from its file (`hpcinfer cluster doc`): facts, then one row per node.

Pure: it returns text lines and rows, the CLI draws them; so a test reads what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.cluster_file import Node

COLUMNS = ("node", "role", "address", "mac", "login", "hardware", "accelerator", "runs")


@dataclass(frozen=True)
class NodeRow:
    """One node as the table shows it."""

    node: str
    role: str
    address: str
    mac: str
    login: str
    hardware: str
    accelerator: str
    runs: str

    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, column) for column in COLUMNS)


def facts(cluster: Cluster) -> list[tuple[str, str]]:
    """The cluster-wide settings, as (label, value) pairs."""
    file = cluster.file
    vllm = file.vllm
    if vllm is None:
        vllm_text = "not installed" + (
            f" ({cluster.no_vllm_reason()})" if cluster.vllm_device is None else ""
        )
    elif vllm.git is not None:
        vllm_text = f"{cluster.vllm_device} build from {vllm.git.url} at {vllm.git.ref}"
    else:
        vllm_text = f"{cluster.vllm_device} build, version {vllm.version}"
    python = f"{file.python.version} in {file.python.venv}" + (
        f"; pip installs only from the wheelhouse {file.python.wheelhouse}"
        if file.python.wheelhouse
        else ""
    )
    rows = [
        ("cluster", file.label + (f": {file.description}" if file.description else "")),
        ("login", f"{file.remote_user} (ansible_user)"),
        ("workdir", f"{file.control.workdir or '~/hpcinfer'} on {file.control.name}"),
        ("python", python),
        ("ray", f"{file.ray.version} on every node; head on {file.control.name}"),
        ("vllm", vllm_text),
    ]
    if vllm is not None:
        check = vllm.verify
        rows.append(
            (
                "verify",
                f"{check.model} answers {check.prompt!r} ({check.max_tokens} tokens, "
                "temperature 0, sampling seed 0) on each compute node, as recorded",
            )
        )
    server = file.server
    if server is not None:
        limit = f", max model len {server.max_model_len}" if server.max_model_len else ""
        shared = f", registry in {server.shared_dir}" if server.shared_dir else ""
        rows.append(
            (
                "server",
                f"{server.model} on {file.control.name}:{server.port}{limit}: tensor parallel "
                f"{cluster.tensor_parallel}, expert parallel {cluster.expert_parallel} over "
                f"{len(file.compute)} compute node(s) ({cluster.server_backend}){shared}",
            )
        )
    return rows


def _row(cluster: Cluster, node: Node, role: str, runs: str) -> NodeRow:
    profile = cluster.profiles[node.name]
    return NodeRow(
        node=node.name,
        role=role,
        address=node.address + (f" ({node.interface})" if node.interface else ""),
        mac=node.mac or "-",
        login=node.user or cluster.file.remote_user,
        hardware=profile.name,
        accelerator=profile.accelerator or ("cpu cores" if profile.is_cpu else "-"),
        runs=runs,
    )


def node_rows(cluster: Cluster) -> list[NodeRow]:
    """The control node first, then the compute nodes in the file's order."""
    file = cluster.file
    installed = file.vllm is not None
    head = "Ray head, vLLM server" if file.server is not None else "Ray head"
    if installed:
        worker = f"Ray worker, vLLM ({cluster.vllm_device}) x {cluster.ranks_per_node}"
    elif cluster.vllm_device is None:
        worker = "Ray worker (no vLLM: NPU)"
    else:
        worker = "Ray worker"
    return [
        _row(cluster, file.control, "control", head),
        *(_row(cluster, node, "compute", worker) for node in file.compute),
    ]
