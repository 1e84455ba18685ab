"""The driver and communication library `profile run` records, gathered in the engine's
process: the real torch here (CPU), and the GPU stacks through the parts of torch read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from hpcinfer.profile.platform_info import platform_versions, run_probe


def absent() -> SimpleNamespace:
    return SimpleNamespace(is_available=lambda: False)


def fake_torch(**parts: Any) -> SimpleNamespace:
    version = SimpleNamespace(cuda=None, hip=None, xpu=None)
    for key in ("cuda", "hip", "xpu"):
        if f"{key}_version" in parts:
            setattr(version, key, parts.pop(f"{key}_version"))
    devices = {"cuda": absent(), "xpu": absent(), **parts}
    return SimpleNamespace(__version__="2.13.0", version=version, **devices)


def test_on_cpu_there_is_no_driver_and_the_library_is_torch_gloo_with_vllm_shm() -> None:
    assert not torch.cuda.is_available()  # this machine: the CPU build
    found = platform_versions(torch, probe=lambda argv: None)
    assert found == {
        "driver": None,
        "communication_library": f"gloo (torch {torch.__version__}) + shm",
    }


def test_nvidia_driver_from_nvidia_smi_and_nccl_from_torch() -> None:
    asked: list[list[str]] = []

    def smi(argv: list[str]) -> str | None:
        asked.append(argv)
        return "550.54.15"

    cuda = SimpleNamespace(
        is_available=lambda: True, nccl=SimpleNamespace(version=lambda: (2, 21, 5))
    )
    found = platform_versions(fake_torch(cuda=cuda, cuda_version="12.4"), probe=smi)
    assert found == {
        "driver": "NVIDIA driver 550.54.15, CUDA 12.4",
        "communication_library": "NCCL 2.21.5",
    }
    assert asked == [["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]]
    # without nvidia-smi the CUDA runtime is still named, and said to be only that
    assert (
        platform_versions(fake_torch(cuda=cuda, cuda_version="12.4"), probe=lambda a: None)[
            "driver"
        ]
        == "CUDA 12.4 (no nvidia-smi)"
    )


def test_rocm_is_hip_and_rccl() -> None:
    cuda = SimpleNamespace(
        is_available=lambda: True, nccl=SimpleNamespace(version=lambda: (2, 20, 3))
    )
    found = platform_versions(fake_torch(cuda=cuda, hip_version="6.2.1"), probe=lambda a: None)
    assert found == {"driver": "ROCm/HIP 6.2.1", "communication_library": "RCCL 2.20.3"}


def test_intel_gpus_are_level_zero_from_the_device_properties() -> None:
    props = SimpleNamespace(driver_version="1.3.30049+10")
    xpu = SimpleNamespace(is_available=lambda: True, get_device_properties=lambda i: props)
    found = platform_versions(fake_torch(xpu=xpu, xpu_version="20240101"), probe=lambda a: None)
    assert found["driver"] == "Level Zero 1.3.30049+10, torch XPU 20240101"
    assert found["communication_library"].startswith(("oneCCL ", "XCCL (torch 2.13.0)"))


def test_a_missing_tool_gives_none_and_a_present_one_its_first_line() -> None:
    assert run_probe(["hpcinfer-no-such-tool-here"]) is None
    assert run_probe(["python3", "-c", "print('a'); print('b')"]) == "a"
    assert run_probe(["python3", "-c", "raise SystemExit(3)"]) is None
