"""A loaded cluster: its file, each node's hardware profile, and what follows from them.

What vLLM is built for and the server's tensor and expert parallelism are derived here, once,
from the compute nodes' profiles, for every renderer (inventory, description) to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpcinfer.cluster.hardware import HardwareProfile, load_profile
from hpcinfer.errors import HardwareError, SpecError
from hpcinfer.provision import values
from hpcinfer.provision.catalog import is_shipped_address, shipped_text
from hpcinfer.provision.cluster_file import ClusterFile, Node, parse_cluster_file, read_cluster_file

VllmDevice = Literal["xpu", "cuda", "rocm", "cpu"]
_DEVICES: dict[str, VllmDevice] = {"intel": "xpu", "nvidia": "cuda", "amd": "rocm", "cpu": "cpu"}


@dataclass(frozen=True)
class Cluster:
    """A validated cluster file with its nodes' profiles; `source` is how the user named it."""

    file: ClusterFile
    source: str
    profiles: dict[str, HardwareProfile]  # node name -> its profile

    @property
    def compute_profile(self) -> HardwareProfile:
        """The one profile every compute node shares (checked on loading)."""
        return self.profiles[self.file.compute[0].name]

    @property
    def vllm_device(self) -> VllmDevice | None:
        """The build of vLLM the cluster runs (from its compute nodes); None: none exists."""
        profile = self.compute_profile
        return _DEVICES[profile.vendor] if profile.has_vllm_backend else None

    @property
    def ranks_per_node(self) -> int:
        """vLLM ranks one compute node holds: a GPU (or tile) each, or one for a CPU node."""
        profile = self.compute_profile
        return 1 if profile.is_cpu else profile.gpus_per_node * profile.tiles_per_gpu

    @property
    def tensor_parallel(self) -> int:
        """One server over every compute device (Ray spans the nodes): TP = all devices."""
        return self.ranks_per_node * len(self.file.compute)

    @property
    def server_backend(self) -> str:
        """How the server spans the compute nodes: Ray for GPUs, ssh-launched ranks (mp) for
        CPU nodes (vLLM's CPU build has no Ray executor)."""
        return "mp" if self.vllm_device == "cpu" else "ray"

    @property
    def expert_parallel(self) -> int:
        """vLLM's EP = TP x DP, with one data-parallel replica."""
        return self.tensor_parallel

    def no_vllm_reason(self) -> str:
        """Why this cluster gets no vLLM, in words a user can act on ('' when it does)."""
        if self.vllm_device is not None:
            return ""
        profile = self.compute_profile
        return (
            f"{self.file.label}: the compute nodes' accelerator ({profile.accelerator or 'NPU'}, "
            f"profile {profile.name}) is an NPU and vLLM has no NPU backend, so no vLLM is "
            "installed or served on this cluster; give the compute nodes the cpu profile to run "
            "the vLLM CPU build on their cores instead"
        )


def load_cluster(address_or_path: str) -> Cluster:
    """A shipped cluster (NAME@VERSION) or a user's file, with every node's profile loaded."""
    if is_shipped_address(address_or_path) and not Path(address_or_path).exists():
        file = parse_cluster_file(shipped_text(address_or_path), address_or_path)
        base = None
        if file.label != address_or_path:
            raise SpecError(f"shipped cluster file {address_or_path} says it is {file.label}")
    else:
        path = Path(address_or_path).expanduser()
        file = read_cluster_file(path)
        base = path.parent
    cluster = Cluster(file, address_or_path, _profiles(file, address_or_path, base))
    _check(cluster)
    return cluster


def _profiles(file: ClusterFile, source: str, base: Path | None) -> dict[str, HardwareProfile]:
    found = {}
    for where, node in _where(file):
        name = node.hardware
        if base is not None and not Path(name).is_absolute() and name.endswith((".yaml", ".yml")):
            name = str(base / name)
        try:
            profile = load_profile(name)
            values.host_name(profile.name)  # it is rendered as a variable: plain, like a host
        except (HardwareError, ValueError) as exc:
            raise SpecError(f"cluster file {source}: {where}.hardware: {exc}") from exc
        found[node.name] = profile
    return found


def _where(file: ClusterFile) -> list[tuple[str, Node]]:
    return [("control", file.control), *((f"compute.{i}", n) for i, n in enumerate(file.compute))]


def _check(cluster: Cluster) -> None:
    """What needs the profiles: one profile for all compute nodes, vLLM only where it runs."""
    file = cluster.file
    names = sorted({cluster.profiles[n.name].name for n in file.compute})
    if len(names) > 1:
        raise SpecError(
            f"cluster file {cluster.source}: compute nodes use profiles {', '.join(names)}; give "
            "every compute node one profile (one server splits a model evenly over them)"
        )
    if file.vllm is not None and cluster.vllm_device is None:
        raise SpecError(
            f"cluster file {cluster.source}: vllm: cannot be installed: "
            f"{cluster.no_vllm_reason()}; or remove the vllm: section"
        )
    if file.server is not None and file.server.shared_dir is None and cluster.vllm_device == "cpu":
        raise SpecError(
            f"cluster file {cluster.source}: server.shared_dir: required where the compute nodes "
            "run vLLM's CPU build (it has no Ray executor, so the server spans the nodes over "
            "ssh and its registry must be a folder every node shares); write e.g. "
            "shared_dir: /srv/cluster/hpcinfer (an NFS export every node mounts)"
        )
