"""Which devices each worker on a node gets, decided once and shown before anything starts.

The device order follows Aurora-Inferencing's gpu_tile_compact.sh: in "compact" order local rank r
takes ``gpu = (r // tiles_per_gpu) % num_gpus``, ``tile = r % tiles_per_gpu``, so the tiles
of one GPU are filled first; "scatter" spreads consecutive ranks over GPUs first
(``gpu = r % num_gpus``, ``tile = (r // num_gpus) % tiles_per_gpu``). A tensor-parallel
group of k ranks is k consecutive slots of that order; workers past the last group wrap
round-robin and share devices. Everything that wastes or shares a device becomes a
warning, so "TP=8 on a 12-tile node" is visible before the job burns an allocation.

On CPU a device is a core and a device group is a contiguous core set: cores are split
evenly among the workers (each TP rank gets an equal slice), so one worker on an idle
machine uses all of it. The mode does not apply on CPU (contiguous cores keep a rank's
threads together).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hpcinfer.cluster.binding import binding_env, device_env
from hpcinfer.cluster.devices import Device, DeviceGroup
from hpcinfer.cluster.hardware import HardwareProfile
from hpcinfer.core.binding_env import BindingEnv
from hpcinfer.errors import HardwareError

Mode = Literal["compact", "scatter"]
MODES: tuple[str, ...] = ("compact", "scatter")
_MAX_LABELS = 8


@dataclass(frozen=True)
class Placement:
    """One worker's devices and the environment that binds it to them."""

    worker: int
    group: DeviceGroup
    env: BindingEnv
    shared: bool


@dataclass(frozen=True)
class PlacementPlan:
    """Every worker's placement on one node, plus what is left idle and why."""

    profile: HardwareProfile
    tp: int
    mode: str
    placements: list[Placement]
    idle_devices: list[Device]
    warnings: list[str]

    def table_rows(self) -> list[dict[str, str]]:
        """Rows for a placement table; env shows only binding vars ('-VAR' means unset)."""
        rows = []
        for placement in self.placements:
            if not placement.group.devices:  # a dispatcher: the servers hold the devices
                rows.append({"worker": str(placement.worker), "devices": "-", "env": ""})
                continue
            env = device_env(self.profile, placement.group, self.tp)
            shown = " ".join(f"-{k}" if v is None else f"{k}={v}" for k, v in env.items())
            rows.append(
                {"worker": str(placement.worker), "devices": placement.group.label, "env": shown}
            )
        return rows


def gpu_slot(rank: int, gpus: int, tiles: int, mode: Mode = "compact") -> tuple[int, int]:
    """(gpu, tile) of local rank ``rank``; ranks past the last tile wrap round-robin."""
    if mode == "compact":
        return (rank // tiles) % gpus, rank % tiles
    return rank % gpus, (rank // gpus) % tiles


def device_order(profile: HardwareProfile, mode: Mode = "compact") -> list[Device]:
    """All devices of one node in the order ranks take them."""
    if profile.is_cpu:
        return [Device(index=core, gpu=None, tile=None) for core in profile.core_ids()]
    gpus, tiles = profile.gpus_per_node, profile.tiles_per_gpu
    order = []
    for rank in range(gpus * tiles):
        gpu, tile = gpu_slot(rank, gpus, tiles, mode)
        order.append(Device(index=gpu * tiles + tile, gpu=gpu, tile=tile if tiles > 1 else None))
    return order


def _labels(devices: list[Device]) -> str:
    """Device labels for a message, cut short on big core counts."""
    names = [d.label for d in devices[:_MAX_LABELS]]
    if len(devices) > _MAX_LABELS:
        names.append(f"... {len(devices) - _MAX_LABELS} more")
    return ", ".join(names)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _stay(count: int) -> str:
    return "stays" if count == 1 else "stay"


def _group_size(profile: HardwareProfile, devices: int, tp: int, workers: int | None) -> int:
    """Devices per group: tp on GPUs; on CPU each rank's even share of the cores."""
    if not profile.is_cpu or workers is None or workers * tp > devices:
        return tp
    return tp * (devices // (workers * tp))


def _remainder_warning(
    profile: HardwareProfile, n: int, tp: int, size: int, idle: list[Device]
) -> str:
    if profile.is_cpu and size > tp:
        return (
            f"{n} cores split into groups of {size} ({size // tp} per TP rank): "
            f"{_plural(len(idle), 'core')} ({_labels(idle)}) {_stay(len(idle))} idle"
        )
    divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
    return (
        f"TP={tp} on {n} devices: {_plural(len(idle), 'device')} ({_labels(idle)}) "
        f"{_stay(len(idle))} idle; "
        f"use a TP that divides {n}: {divisors}"
    )


def _check_args(
    profile: HardwareProfile, n: int, workers: int | None, tp: int, mode: str, offset: int
) -> None:
    if mode not in MODES:
        raise HardwareError(f"unknown placement mode '{mode}'; use one of: {', '.join(MODES)}")
    if tp < 1:
        raise HardwareError(f"TP must be at least 1, got {tp}")
    if workers is not None and workers < 1:
        raise HardwareError(f"workers must be at least 1, got {workers}")
    if offset < 0:
        raise HardwareError(f"local rank offset must be >= 0, got {offset}")
    if tp > n:
        raise HardwareError(
            f"TP={tp} needs {tp} devices; {profile.name} has {n} per node. "
            f"Use TP <= {n} (tensor parallelism across nodes is not placed here)"
        )


def plan_placement(
    profile: HardwareProfile,
    *,
    workers: int | None = None,
    tp: int = 1,
    mode: Mode = "compact",
    local_rank_offset: int = 0,
) -> PlacementPlan:
    """Place ``workers`` workers of TP size ``tp`` on one node of ``profile``.

    ``workers`` defaults to one per device group. Worker w takes the group of local rank
    ``w + local_rank_offset`` (an MPI rank plans for itself with its local rank as offset;
    ranks below the offset are taken to run elsewhere on the node).
    """
    slots = device_order(profile, mode)
    n = len(slots)
    _check_args(profile, n, workers, tp, mode, local_rank_offset)

    size = _group_size(profile, n, tp, workers)
    groups = [DeviceGroup(tuple(slots[i * size : (i + 1) * size])) for i in range(n // size)]
    warnings: list[str] = []
    leftover = slots[len(groups) * size :]
    if leftover:
        warnings.append(_remainder_warning(profile, n, tp, size, leftover))

    count = workers if workers is not None else len(groups)
    ranks = local_rank_offset + count
    usage = Counter(rank % len(groups) for rank in range(ranks))
    placements = []
    for worker in range(count):
        index = (worker + local_rank_offset) % len(groups)
        group = groups[index]
        placements.append(
            Placement(
                worker=worker,
                group=group,
                env=binding_env(profile, group, tp),
                shared=usage[index] > 1,
            )
        )

    unused = [g for i, g in enumerate(groups) if i not in usage]
    if unused and local_rank_offset == 0:
        idle_labels = _labels([d for g in unused for d in g.devices])
        warnings.append(
            f"{_plural(count, 'worker')} on {len(groups)} device groups: "
            f"{_plural(len(unused), 'group')} {_stay(len(unused))} idle ({idle_labels}); "
            "leave workers unset for one worker per group"
        )
    if ranks > len(groups):
        busiest = max(usage.values())
        warnings.append(
            f"{_plural(ranks, 'worker')} on {len(groups)} device groups: groups are shared "
            f"(up to {busiest} workers per group); they compete for device memory and compute"
        )
    used = {d for index in usage for d in groups[index].devices}
    idle = [d for d in slots if d not in used]
    return PlacementPlan(
        profile=profile,
        tp=tp,
        mode=mode,
        placements=placements,
        idle_devices=idle,
        warnings=warnings,
    )


def one_engine_placement(
    profile: HardwareProfile, devices: int, too_many: Callable[[str], Exception]
) -> Placement:
    """Where one engine of `devices` (TP x PP) goes on one node of `profile`; when the node
    has fewer, the caller's `too_many(unit)` error ("cores" or "devices"), which names the
    caller's own flags or fields."""
    if devices > profile.devices_per_node:
        raise too_many("cores" if profile.is_cpu else "devices")
    return plan_placement(profile, workers=1, tp=devices).placements[0]
