"""`ray up`'s defaults, resolved once for the CLI and the Python API alike.

Hosts: the allocation (a hostfile, PBS, Slurm, or this machine). Launcher: `local` for
this machine alone, else ssh. Name: --name, else the job id, else "local". GPUs per node
and the interface: the hardware profile's (GPUs or tiles per node; `network_interface`);
the head's GPUs: --head-gpus, else the same as every node's.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from hpcinfer.cluster import HardwareProfile, resolve_profile
from hpcinfer.cluster.allocation import read_allocation
from hpcinfer.errors import SpecError
from hpcinfer.raycluster.cluster_file import (
    Launcher,
    check_name,
    cluster_path,
    default_cluster_name,
)
from hpcinfer.raycluster.launching import LAUNCHERS
from hpcinfer.raycluster.ports import ray_ports
from hpcinfer.raycluster.up import UpRequest

DEFAULT_READY_TIMEOUT_S = 300.0
DEFAULT_STAGGER_S = 1.0


def resolve_up_request(
    *,
    hostfile: Path | None = None,
    launcher: str | None = None,
    interface: str | None = None,
    gpus_per_node: int | None = None,
    head_gpus: int | None = None,
    cpus_per_node: int | None = None,
    name: str | None = None,
    cluster_file: Path | str | None = None,
    port_base: int | None = None,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    stagger_s: float = DEFAULT_STAGGER_S,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> UpRequest:
    """An `UpRequest` with every default filled in (see the module docstring)."""
    env = os.environ if env is None else env
    allocation = read_allocation(env, hostfile)
    chosen = launcher or ("local" if allocation.source == "local" else "ssh")
    if chosen not in LAUNCHERS:
        raise SpecError(f"--launcher {chosen!r}: choose one of {', '.join(LAUNCHERS)}")
    if gpus_per_node is not None and gpus_per_node < 0:
        raise SpecError(f"--gpus-per-node {gpus_per_node}: give 0 or more")
    if head_gpus is not None and head_gpus < 0:
        raise SpecError(f"--head-gpus {head_gpus}: give 0 or more")
    if cpus_per_node is not None and cpus_per_node < 1:
        raise SpecError(f"--cpus-per-node {cpus_per_node}: give 1 or more")
    if port_base is not None:
        ray_ports(port_base)  # a base whose block leaves the port range fails here
    if stagger_s < 0:
        raise SpecError(f"--stagger {stagger_s:g}: give 0 or more")
    hardware = None
    if gpus_per_node is None or interface is None:
        hardware = resolve_profile(profile)
    gpus = gpus_per_node if gpus_per_node is not None else _profile_gpus(hardware)
    cluster_name = check_name(name) if name is not None else default_cluster_name(env)
    launcher_name: Launcher = chosen  # type: ignore[assignment]
    return UpRequest(
        name=cluster_name,
        hosts=allocation.hosts,
        launcher=launcher_name,
        cluster_file=cluster_path(cluster_file, name, env),
        gpus_per_node=gpus,
        head_gpus=head_gpus,
        cpus_per_node=cpus_per_node,
        interface=interface or (hardware.network_interface if hardware else None),
        port_base=port_base,
        ready_timeout_s=ready_timeout_s,
        stagger_s=stagger_s,
        down_hint=down_hint(name, cluster_file),
    )


def down_hint(name: str | None, cluster_file: Path | str | None) -> str:
    """The options of the `hpcinfer ray down` that matches this `up`: the flag the user
    gave (--cluster-file or --name); none when both came from the defaults."""
    if cluster_file is not None:
        return f"--cluster-file {shlex.quote(str(Path(cluster_file).expanduser()))}"
    if name is not None:
        return f"--name {shlex.quote(name)}"
    return ""


def _profile_gpus(hardware: HardwareProfile | None) -> int:
    """GPUs or tiles per node (a CPU profile: 0)."""
    if hardware is None or hardware.is_cpu:
        return 0
    return hardware.devices_per_node
