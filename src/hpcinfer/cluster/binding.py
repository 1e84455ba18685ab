"""The environment that pins a worker process to its devices.

Device runtimes read these variables once, when torch/vLLM is imported, so the launcher
must put them in the worker's environment before it starts. One binder per vendor, looked
up in a table. A value of None means "unset this variable" (a stale value inherited from
the job script would otherwise win).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hpcinfer.cluster.devices import Device, DeviceGroup, format_core_list
from hpcinfer.core.binding_env import BindingEnv
from hpcinfer.errors import HardwareError

if TYPE_CHECKING:
    from hpcinfer.cluster.hardware import HardwareProfile

Binder = Callable[["HardwareProfile", DeviceGroup, int], BindingEnv]


def _gpu_index(device: Device) -> int:
    if device.gpu is None:
        raise HardwareError(f"{device.label} is a CPU core, not a GPU; check the profile vendor")
    return device.gpu


def _intel(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """Level Zero: ZE_AFFINITY_MASK lists '<gpu>.<tile>' (composite) or flat tile indices.

    A single-tile GPU has no sub-devices, so its mask entry is just '<gpu>'. PCI ordering
    makes the indices match the node's physical layout; EnableWalkerPartition is unset so
    a kernel is not split across tiles behind our back (Aurora-Inferencing's gpu_tile_compact.sh).
    """
    env: BindingEnv = {}
    if profile.flat_hierarchy:
        env["ZE_AFFINITY_MASK"] = ",".join(str(d.index) for d in group.devices)
        env["ZE_FLAT_DEVICE_HIERARCHY"] = "FLAT"
    else:
        env["ZE_AFFINITY_MASK"] = ",".join(
            str(_gpu_index(d)) if d.tile is None else f"{_gpu_index(d)}.{d.tile}"
            for d in group.devices
        )
    env["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] = "1"
    env["EnableWalkerPartition"] = None
    return env


def _nvidia(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """CUDA: the worker sees only its GPUs, renumbered from 0 in the order given."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(_gpu_index(d)) for d in group.devices)}


def _amd(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """ROCm: ROCR_VISIBLE_DEVICES selects at the lowest layer, for HIP and everything above.

    HIP_VISIBLE_DEVICES is unset because HIP applies it on top of ROCR's (renumbered)
    selection: an inherited value would pick the wrong device or none.
    """
    return {
        "ROCR_VISIBLE_DEVICES": ",".join(str(_gpu_index(d)) for d in group.devices),
        "HIP_VISIBLE_DEVICES": None,
    }


def _cpu(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """vLLM CPU: one core set per TP rank, '|'-separated; OMP threads = cores per rank."""
    cores = [d.index for d in group.devices]
    if len(cores) % tp:
        raise HardwareError(
            f"{len(cores)} cores cannot be split evenly over TP={tp} ranks; "
            f"use a core count that is a multiple of {tp}"
        )
    per_rank = len(cores) // tp
    slices = [cores[i * per_rank : (i + 1) * per_rank] for i in range(tp)]
    return {
        "VLLM_CPU_OMP_THREADS_BIND": "|".join(format_core_list(s) for s in slices),
        "OMP_NUM_THREADS": str(per_rank),
    }


BINDERS: dict[str, Binder] = {
    "intel": _intel,
    "nvidia": _nvidia,
    "amd": _amd,
    "cpu": _cpu,
}


def device_env(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """Only the variables that select devices for this group (what a placement table shows)."""
    if tp < 1:
        raise HardwareError(f"TP must be at least 1, got {tp}")
    if not group.devices:
        raise HardwareError("cannot bind a worker to an empty device group")
    if not profile.has_vllm_backend:
        raise HardwareError(
            f"profile {profile.name}: its devices are NPUs ({profile.accelerator or 'NPU'}) and "
            "vLLM has no NPU backend; use profile cpu to run on the node's cores"
        )
    return BINDERS[profile.vendor](profile, group, tp)


def binding_env(profile: HardwareProfile, group: DeviceGroup, tp: int) -> BindingEnv:
    """The full worker environment: the profile's extra env, then the device binding.

    The binding wins on a clash: the profile may add site settings, not move devices.
    """
    env: BindingEnv = dict(profile.env)
    env.update(device_env(profile, group, tp))
    return env


def cpu_affinity(group: DeviceGroup) -> set[int] | None:
    """Core ids for os.sched_setaffinity when the group is CPU cores; None for GPU groups."""
    if group.devices and all(d.gpu is None for d in group.devices):
        return {d.index for d in group.devices}
    return None
