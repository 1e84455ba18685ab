"""The device driver and communication library of the process vLLM runs in.

The engine child calls `platform_versions` once the engine is up and sends the answer with
its `ready` event, so profile.json (and the CCL-Bench workload card) records what the run
really had, never what the launching process guesses. Imports only the standard library;
torch is passed in (the child has it imported already, vLLM imported it).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

Probe = Callable[[list[str]], str | None]


def run_probe(argv: list[str]) -> str | None:
    """A tool's first output line, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def platform_versions(torch: Any, probe: Probe = run_probe) -> dict[str, str | None]:
    """`driver` (None on CPU) and `communication_library` (with its version where the
    library has one) of this process's devices, as profile.json's Versions holds them."""
    version = getattr(torch, "version", None)
    hip = getattr(version, "hip", None)
    if _available(getattr(torch, "cuda", None)):
        if hip:
            return {"driver": f"ROCm/HIP {hip}", "communication_library": _nccl(torch, "RCCL")}
        return {"driver": _nvidia_driver(torch, probe), "communication_library": _nccl(torch)}
    xpu = getattr(torch, "xpu", None)
    if _available(xpu):
        return {"driver": _level_zero(torch, xpu), "communication_library": _oneccl(torch)}
    torch_version = getattr(torch, "__version__", "?")
    return {"driver": None, "communication_library": f"gloo (torch {torch_version}) + shm"}


def _available(device_module: Any) -> bool:
    try:
        return bool(device_module is not None and device_module.is_available())
    except Exception:  # a half-installed device stack: treated as absent
        return False


def _nvidia_driver(torch: Any, probe: Probe) -> str:
    cuda = getattr(torch.version, "cuda", None)
    driver = probe(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    runtime = f"CUDA {cuda}" if cuda else "CUDA"
    return f"NVIDIA driver {driver}, {runtime}" if driver else f"{runtime} (no nvidia-smi)"


def _nccl(torch: Any, name: str = "NCCL") -> str:
    try:
        found = torch.cuda.nccl.version()
    except Exception:  # torch built without NCCL
        return f"{name} (version unknown)"
    return f"{name} {'.'.join(str(part) for part in found) if isinstance(found, tuple) else found}"


def _level_zero(torch: Any, xpu: Any) -> str:
    sycl = getattr(torch.version, "xpu", None)
    try:
        driver = getattr(xpu.get_device_properties(0), "driver_version", None)
    except Exception:
        driver = None
    parts = [f"Level Zero {driver}" if driver else "Level Zero"]
    if sycl:
        parts.append(f"torch XPU {sycl}")
    return ", ".join(parts)


def _oneccl(torch: Any) -> str:
    for package in ("oneccl_bind_pt", "oneccl-bind-pt"):
        try:
            return f"oneCCL {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"XCCL (torch {getattr(torch, '__version__', '?')})"
