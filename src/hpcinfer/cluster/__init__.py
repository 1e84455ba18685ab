"""Hardware profiles, local detection, and placement of workers onto a node's devices."""

from hpcinfer.cluster.binding import binding_env, cpu_affinity, device_env
from hpcinfer.cluster.detect import PROFILE_ENV, detect_local, resolve_profile
from hpcinfer.cluster.devices import Device, DeviceGroup, format_core_list
from hpcinfer.cluster.hardware import HardwareProfile, list_profiles, load_profile
from hpcinfer.cluster.placement import (
    Placement,
    PlacementPlan,
    device_order,
    gpu_slot,
    one_engine_placement,
    plan_placement,
)
from hpcinfer.core.binding_env import apply_env

__all__ = [
    "PROFILE_ENV",
    "Device",
    "DeviceGroup",
    "HardwareProfile",
    "Placement",
    "PlacementPlan",
    "apply_env",
    "binding_env",
    "cpu_affinity",
    "detect_local",
    "device_env",
    "device_order",
    "format_core_list",
    "gpu_slot",
    "list_profiles",
    "load_profile",
    "one_engine_placement",
    "plan_placement",
    "resolve_profile",
]
