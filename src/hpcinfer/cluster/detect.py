"""Find out what this node has, for runs that say ``hardware: auto``.

Detection asks each vendor's own tool in turn (as the scripts users run do) and falls back to
the CPU. It only counts devices: anything finer (flat hierarchy, peak figures) belongs in a
profile, and ``HPCINFER_PROFILE=<name or path>`` beats detection for machines that need one.

Every external command goes through one ``runner`` seam that returns stdout, or None when
the command is missing or fails, so tests fake the machine without touching it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hpcinfer.cluster.hardware import HardwareProfile, load_profile
from hpcinfer.cluster.probe import (
    Runner,
    run_probe,
)

PROFILE_ENV = "HPCINFER_PROFILE"
I915_DRIVER_DIR = Path("/sys/module/i915/drivers/pci:i915")
KFD_DEVICE = Path("/dev/kfd")

# Markers of a multi-tile Intel part (Data Center GPU Max / Ponte Vecchio, PCI ids 0x0bd*)
# in `udevadm info` output or the sysfs `device` file. Anything else counts as one tile.
_MULTI_TILE_MARKERS = ("Max", "PVC", "Ponte Vecchio")
_MULTI_TILE_PCI_IDS = ("0x0bd", ":0bd")


_run = run_probe


def _detect_nvidia(runner: Runner, _i915: Path) -> HardwareProfile | None:
    """`nvidia-smi -L` prints one 'GPU <n>: <name> (UUID: ...)' line per visible GPU."""
    out = runner(["nvidia-smi", "-L"])
    if not out:
        return None
    lines = [line for line in out.splitlines() if line.startswith("GPU ")]
    if not lines:
        return None
    name = lines[0].split(":", 1)[1].split("(UUID", 1)[0].strip() if ":" in lines[0] else ""
    return HardwareProfile(
        name="detected-nvidia",
        description=f"detected with nvidia-smi: {len(lines)} GPU(s)",
        vendor="nvidia",
        gpus_per_node=len(lines),
        accelerator=name,
    )


def _intel_text(path: Path, runner: Runner) -> str:
    """What we know of one i915 device: `udevadm info`, else its sysfs PCI device id."""
    out = runner(["udevadm", "info", str(path)])
    if out:
        return out
    try:
        return (path / "device").read_text(encoding="utf-8")
    except OSError:
        return ""


def _is_multi_tile(text: str) -> bool:
    lowered = text.lower()
    return any(m in text for m in _MULTI_TILE_MARKERS) or any(
        pci in lowered for pci in _MULTI_TILE_PCI_IDS
    )


def _detect_intel(runner: Runner, i915: Path) -> HardwareProfile | None:
    """gpu_tile_compact.sh's method: one entry per GPU under the i915 driver's PCI folder.

    Counting the PCI addresses (``0000:8a:00.0``...) rather than every entry skips the
    driver's own files (bind, unbind, uevent). Two tiles when the part is a Max/PVC.
    """
    try:
        devices = sorted(p for p in i915.glob("[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:*"))
    except OSError:
        return None
    if not devices:
        return None
    texts = [_intel_text(path, runner) for path in devices]
    tiles = 2 if any(_is_multi_tile(text) for text in texts) else 1
    return HardwareProfile(
        name="detected-intel",
        description=f"detected under {i915}: {len(devices)} GPU(s) x {tiles} tile(s)",
        vendor="intel",
        gpus_per_node=len(devices),
        tiles_per_gpu=tiles,
    )


def _detect_amd(runner: Runner, _i915: Path) -> HardwareProfile | None:
    """`rocm-smi --showid` prints one 'GPU[<n>]' row per device; /dev/kfd alone means one."""
    out = runner(["rocm-smi", "--showid"])
    ids = set()
    for line in (out or "").splitlines():
        if line.startswith("GPU[") and "]" in line:
            ids.add(line[4 : line.index("]")])
    count = len(ids)
    if count == 0 and out is None and KFD_DEVICE.exists():
        count = 1
    if count == 0:
        return None
    return HardwareProfile(
        name="detected-amd",
        description=f"detected with rocm-smi: {count} GPU(s)",
        vendor="amd",
        gpus_per_node=count,
    )


def _detect_cpu() -> HardwareProfile:
    cores = len(os.sched_getaffinity(0))
    return HardwareProfile(
        name="detected-cpu",
        description=f"no accelerator found: {cores} core(s) this process may use",
        vendor="cpu",
        cores_per_node=None,
    )


# Tried in order; the first that finds devices wins, the CPU is the fallback.
_DETECTORS: tuple[Callable[[Runner, Path], HardwareProfile | None], ...] = (
    _detect_nvidia,
    _detect_intel,
    _detect_amd,
)


def detect_local(runner: Runner = _run, *, i915_dir: Path = I915_DRIVER_DIR) -> HardwareProfile:
    """This node's profile: $HPCINFER_PROFILE if set, else the first vendor found, else CPU."""
    override = os.environ.get(PROFILE_ENV, "").strip()
    if override and override != "auto":
        return load_profile(override)
    for detector in _DETECTORS:
        found = detector(runner, i915_dir)
        if found is not None:
            return found
    return _detect_cpu()


def resolve_profile(value: str | None) -> HardwareProfile:
    """The profile a run uses: detected for None/'auto', else loaded by name or path."""
    if value is None or value == "auto":
        return detect_local()
    return load_profile(value)
