"""The Ansible inventory and group variables, rendered from a cluster file and nothing else.

YAML inventory format: groups `control` (the Ray head, where the vLLM server runs; Ansible runs
there, so it is `ansible_connection: local`) and `compute` (Ray workers, reached over ssh), each
host with ansible_host and ansible_user; group_vars/ holds what the roles read (versions, the
venv, the wheelhouse, the accelerator, TP/EP, vLLM's check, the server). Optional settings are
left out when not set, so a role tests `is defined`. Output is deterministic (same file,
same bytes) and every value in it passed the cluster file's checks (host names, logins, paths
and versions of plain characters), so nothing in it can break out of a shell or a template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.cluster_file import Node

INVENTORY = "inventory.yml"


def _header(cluster: Cluster, what: str) -> str:
    return (
        f"# {what} of cluster {cluster.file.label}, rendered by `hpcinfer cluster inventory`.\n"
        "# Edit the cluster file and render again; changes made here are lost.\n"
    )


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _host(cluster: Cluster, node: Node) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ansible_host": node.address,
        "ansible_user": node.user or cluster.file.remote_user,
        "hardware_profile": cluster.profiles[node.name].name,
    }
    if node.mac is not None:
        entry["mac_address"] = node.mac
    if node.interface is not None:
        entry["cluster_interface"] = node.interface
    if node is cluster.file.control:
        entry["ansible_connection"] = "local"  # Ansible always runs on the control node
    return entry


def inventory_data(cluster: Cluster) -> dict[str, Any]:
    """The inventory as Ansible's YAML format has it: all -> children -> control, compute."""
    file = cluster.file
    return {
        "all": {
            "children": {
                "control": {"hosts": {file.control.name: _host(cluster, file.control)}},
                "compute": {"hosts": {n.name: _host(cluster, n) for n in file.compute}},
            }
        }
    }


def all_vars(cluster: Cluster) -> dict[str, Any]:
    """What every host's roles read: the cluster, its login, venv and pinned versions."""
    file = cluster.file
    data: dict[str, Any] = {
        "cluster_name": file.name,
        "cluster_version": file.version,
        "cluster_user": file.remote_user,
        "python_version": file.python.version,
        "venv": file.python.venv,
        **({"wheelhouse": file.python.wheelhouse} if file.python.wheelhouse else {}),
        **({"workdir": file.control.workdir} if file.control.workdir else {}),
        "ray_version": file.ray.version,
        "ray_head": file.control.name,
        "ray_head_address": file.control.address,
        "vllm_install": file.vllm is not None,
        "vllm_device": cluster.vllm_device or "none",
    }
    if file.vllm is None:
        if cluster.vllm_device is None:
            data["vllm_unavailable"] = cluster.no_vllm_reason()
        return data
    if file.vllm.version is not None:
        data["vllm_version"] = file.vllm.version
    if file.vllm.git is not None:
        data["vllm_git_url"] = file.vllm.git.url
        data["vllm_git_ref"] = file.vllm.git.ref
    if cluster.vllm_device == "xpu":
        data["oneapi_setvars"] = file.vllm.oneapi_setvars
    data["vllm_tensor_parallel_size"] = cluster.tensor_parallel
    data["vllm_expert_parallel_size"] = cluster.expert_parallel
    data["vllm_pipeline_parallel_size"] = 1
    verify = file.vllm.verify
    data["vllm_verify_model"] = verify.model
    data["vllm_verify_prompt"] = verify.prompt
    data["vllm_verify_max_tokens"] = verify.max_tokens
    server = file.server
    if server is not None:
        data["vllm_server_model"] = server.model
        data["vllm_server_port"] = server.port
        if server.max_model_len is not None:
            data["vllm_server_max_model_len"] = server.max_model_len
        data["vllm_server_backend"] = cluster.server_backend
        if server.shared_dir is not None:
            data["vllm_server_shared_dir"] = server.shared_dir
    return data


def _group_vars(cluster: Cluster, nodes: list[Node], role: str) -> dict[str, Any]:
    profile = cluster.profiles[nodes[0].name]
    data: dict[str, Any] = {"cluster_role": role, "accelerator": profile.accelerator or "cpu"}
    if nodes is cluster.file.compute:
        data["devices_per_node"] = cluster.ranks_per_node
        data["device_type"] = "cpu" if profile.is_cpu else profile.device_type
    return data


def control_role(cluster: Cluster) -> str:
    """What the control node runs: the Ray head, and the vLLM server where one is asked for."""
    return "ray head and vLLM server" if cluster.file.server is not None else "ray head"


def render_inventory(cluster: Cluster) -> dict[str, str]:
    """File name (relative to the inventory folder) -> its text, in a fixed order."""
    file = cluster.file
    return {
        INVENTORY: _header(cluster, "Ansible inventory") + _dump(inventory_data(cluster)),
        "group_vars/all.yml": _header(cluster, "Variables of every host")
        + _dump(all_vars(cluster)),
        "group_vars/control.yml": _header(cluster, "Variables of the control node")
        + _dump(_group_vars(cluster, [file.control], control_role(cluster))),
        "group_vars/compute.yml": _header(cluster, "Variables of the compute nodes")
        + _dump(_group_vars(cluster, file.compute, "ray worker")),
    }


def write_inventory(cluster: Cluster, out: Path) -> list[Path]:
    """Write the rendered files under `out` (each atomically); the paths written, in order."""
    written = []
    for name, text in render_inventory(cluster).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        written.append(path)
    return written
