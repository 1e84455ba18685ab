"""What a worker can be given: a device (a GPU tile, a whole GPU, a CPU core) and a group of
them. Plain values that placement decides and binding turns into environment variables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def format_core_list(cores: Sequence[int]) -> str:
    """Cores as the kernel writes cpusets: runs become ranges ([0,1,2,5] -> '0-2,5')."""
    parts: list[str] = []
    start = prev = None
    for core in cores:
        if prev is not None and core == prev + 1:
            prev = core
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = core
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@dataclass(frozen=True)
class Device:
    """One schedulable unit: a tile (multi-tile Intel GPU), a whole GPU, or a CPU core.

    ``index`` is the flat index on the node (``gpu * tiles_per_gpu + tile``; the core id on
    CPU). ``tile`` is None for single-tile GPUs and cores, ``gpu`` is None for cores.
    """

    index: int
    gpu: int | None
    tile: int | None

    @property
    def label(self) -> str:
        if self.gpu is None:
            return f"core{self.index}"
        if self.tile is None:
            return f"gpu{self.gpu}"
        return f"gpu{self.gpu}.tile{self.tile}"


@dataclass(frozen=True)
class DeviceGroup:
    """The devices one worker owns: TP ranks' devices on GPUs, a core set on CPU."""

    devices: tuple[Device, ...]

    @property
    def labels(self) -> list[str]:
        return [d.label for d in self.devices]

    @property
    def label(self) -> str:
        """Short text for tables: 'gpu0.tile0,gpu0.tile1', or 'cores 0-3' for a core set."""
        if self.devices and all(d.gpu is None for d in self.devices):
            if len(self.devices) == 1:
                return self.devices[0].label
            return "cores " + format_core_list([d.index for d in self.devices])
        return ",".join(self.labels)
