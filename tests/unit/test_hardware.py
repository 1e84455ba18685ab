"""Hardware profiles (shipped and user files) and local detection through a fake runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcinfer.cluster import detect
from hpcinfer.cluster.detect import PROFILE_ENV, detect_local, resolve_profile
from hpcinfer.cluster.hardware import HardwareProfile, list_profiles, load_profile
from hpcinfer.errors import HardwareError

SHIPPED = ["arc-a770", "aurora", "cpu", "perlmutter", "polaris", "ryzen-ai-max-395"]

NVIDIA_SMI_4 = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555556)
GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555557)
GPU 3: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555558)
"""


class FakeRunner:
    """Answers probe commands by program name and records every call."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> str | None:
        self.calls.append(cmd)
        return self.outputs.get(cmd[0])


def fake_runner(outputs: dict[str, str]) -> FakeRunner:
    return FakeRunner(outputs)


@pytest.fixture(autouse=True)
def _no_host_hardware(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Detection must only see what each test fakes, whatever this machine has."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.setattr(detect, "KFD_DEVICE", tmp_path / "no-kfd")


def no_i915(tmp_path: Path) -> Path:
    return tmp_path / "no-i915"


# --- profiles -------------------------------------------------------------------------


def test_list_profiles_names_every_shipped_file() -> None:
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_is_named_after_its_file(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.devices_per_node >= 1


def test_shipped_profile_facts() -> None:
    aurora = load_profile("aurora")
    assert (aurora.vendor, aurora.gpus_per_node, aurora.tiles_per_gpu) == ("intel", 6, 2)
    assert aurora.devices_per_node == 12
    assert "Max 1550" in aurora.accelerator
    assert "approximate" in aurora.description
    for name in ("polaris", "perlmutter"):
        nvidia = load_profile(name)
        assert (nvidia.vendor, nvidia.gpus_per_node, nvidia.devices_per_node) == ("nvidia", 4, 4)
        assert nvidia.accelerator == "NVIDIA A100-SXM4-40GB"
        assert nvidia.peak_tflops_bf16 == 312.0
    arc = load_profile("arc-a770")
    assert (arc.vendor, arc.gpus_per_node, arc.tiles_per_gpu) == ("intel", 1, 1)
    assert arc.memory_gib_per_device == 16.0


def test_cpu_profile_counts_the_cores_this_process_may_use() -> None:
    cpu = load_profile("cpu")
    assert cpu.vendor == "cpu"
    assert cpu.cores_per_node is None
    assert cpu.devices_per_node == len(os.sched_getaffinity(0))
    assert cpu.core_ids() == sorted(os.sched_getaffinity(0))


def test_fixed_core_count_uses_ids_from_zero() -> None:
    cpu = HardwareProfile(name="c8", vendor="cpu", cores_per_node=8)
    assert cpu.core_ids() == list(range(8))
    assert cpu.devices_per_node == 8


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(HardwareError) as info:
        load_profile("frontier")
    message = str(info.value)
    assert "frontier" in message
    for name in SHIPPED:
        assert name in message


def test_missing_profile_file_is_a_hardware_error(tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="does not exist"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_user_profile_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mybox.yaml"
    path.write_text(
        "vendor: nvidia\ngpus_per_node: 2\nenv:\n  NCCL_DEBUG: WARN\n", encoding="utf-8"
    )
    profile = load_profile(str(path))
    assert profile.name == "mybox"  # defaults to the file name
    assert profile.gpus_per_node == 2
    assert profile.env == {"NCCL_DEBUG": "WARN"}


def test_unknown_field_in_user_yaml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nvendor: intel\ngpus_per_node: 6\ntiles_per_gpus: 2\n")
    with pytest.raises(HardwareError) as info:
        load_profile(str(path))
    assert "tiles_per_gpus" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type_in_user_yaml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nvendor: nvidia\ngpus_per_node: four\n")
    with pytest.raises(HardwareError, match="gpus_per_node"):
        load_profile(str(path))


def test_unknown_vendor_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nvendor: tpu\ngpus_per_node: 4\n")
    with pytest.raises(HardwareError, match="vendor"):
        load_profile(str(path))


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- aurora\n- polaris\n")
    with pytest.raises(HardwareError, match="mapping"):
        load_profile(str(path))


def test_broken_yaml_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(HardwareError, match="not valid YAML"):
        load_profile(str(path))


@pytest.mark.parametrize(
    "fields",
    [
        {"vendor": "nvidia", "gpus_per_node": 0},
        {"vendor": "cpu", "gpus_per_node": 2},
        {"vendor": "nvidia", "gpus_per_node": 4, "flat_hierarchy": True},
        {"vendor": "intel", "gpus_per_node": 1, "tiles_per_gpu": 0},
    ],
)
def test_inconsistent_profiles_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HardwareProfile.model_validate({"name": "x", **fields})


def test_resolve_profile_by_name_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_profile("polaris").name == "polaris"
    monkeypatch.setenv(PROFILE_ENV, "aurora")
    assert resolve_profile(None).name == "aurora"
    assert resolve_profile("auto").name == "aurora"


# --- detection ------------------------------------------------------------------------


def test_detect_nvidia_from_nvidia_smi(tmp_path: Path) -> None:
    runner = fake_runner({"nvidia-smi": NVIDIA_SMI_4})
    profile = detect_local(runner, i915_dir=no_i915(tmp_path))
    assert profile.vendor == "nvidia"
    assert profile.gpus_per_node == 4
    assert profile.devices_per_node == 4
    assert profile.accelerator == "NVIDIA A100-SXM4-40GB"
    assert runner.calls[0] == ["nvidia-smi", "-L"]


def test_detect_nothing_falls_back_to_cpu(tmp_path: Path) -> None:
    profile = detect_local(fake_runner({}), i915_dir=no_i915(tmp_path))
    assert profile.vendor == "cpu"
    assert profile.devices_per_node == len(os.sched_getaffinity(0))


def test_nvidia_smi_without_gpu_lines_is_not_a_gpu(tmp_path: Path) -> None:
    runner = fake_runner({"nvidia-smi": "No devices were found\n"})
    assert detect_local(runner, i915_dir=no_i915(tmp_path)).vendor == "cpu"


def _fake_i915(tmp_path: Path, count: int, pci_id: str) -> Path:
    root = tmp_path / "pci:i915"
    root.mkdir()
    for name in ("bind", "unbind", "uevent", "new_id"):
        (root / name).write_text("")
    for i in range(count):
        dev = root / f"0000:{0x18 + i:02x}:00.0"
        dev.mkdir()
        (dev / "device").write_text(f"{pci_id}\n")
    return root


def test_detect_intel_pvc_counts_devices_via_udevadm(tmp_path: Path) -> None:
    root = _fake_i915(tmp_path, 6, "0x0bd6")
    udev = (
        "P: /devices/pci0000:00\n"
        "E: ID_MODEL_FROM_DATABASE=Ponte Vecchio XT [Data Center GPU Max 1550]\n"
    )
    runner = fake_runner({"udevadm": udev})
    profile = detect_local(runner, i915_dir=root)
    assert (profile.vendor, profile.gpus_per_node, profile.tiles_per_gpu) == ("intel", 6, 2)
    udevadm_calls = [c for c in runner.calls if c[0] == "udevadm"]
    assert len(udevadm_calls) == 6


def test_detect_intel_without_udevadm_reads_the_pci_id(tmp_path: Path) -> None:
    root = _fake_i915(tmp_path, 6, "0x0bd6")
    profile = detect_local(fake_runner({}), i915_dir=root)
    assert (profile.gpus_per_node, profile.tiles_per_gpu) == (6, 2)


def test_detect_intel_arc_is_single_tile(tmp_path: Path) -> None:
    root = _fake_i915(tmp_path, 1, "0x56a0")
    runner = fake_runner({"udevadm": "E: ID_MODEL_FROM_DATABASE=DG2 [Arc A770]\n"})
    profile = detect_local(runner, i915_dir=root)
    assert (profile.vendor, profile.gpus_per_node, profile.tiles_per_gpu) == ("intel", 1, 1)


def test_detect_amd_from_rocm_smi(tmp_path: Path) -> None:
    out = "GPU[0]\t\t: Device ID: 0x740f\nGPU[1]\t\t: Device ID: 0x740f\n"
    profile = detect_local(fake_runner({"rocm-smi": out}), i915_dir=no_i915(tmp_path))
    assert (profile.vendor, profile.gpus_per_node) == ("amd", 2)


def test_profile_env_overrides_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PROFILE_ENV, "aurora")
    runner = fake_runner({"nvidia-smi": NVIDIA_SMI_4})
    profile = detect_local(runner, i915_dir=no_i915(tmp_path))
    assert profile.name == "aurora"
    assert runner.calls == []


def test_profile_env_accepts_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("name: site\nvendor: nvidia\ngpus_per_node: 8\n")
    monkeypatch.setenv(PROFILE_ENV, str(path))
    assert detect_local(fake_runner({}), i915_dir=no_i915(tmp_path)).gpus_per_node == 8


def test_bad_profile_env_is_a_hardware_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "no-such-machine")
    with pytest.raises(HardwareError, match="known profiles"):
        detect_local(fake_runner({}))


def test_real_runner_returns_none_for_a_missing_command() -> None:
    assert detect._run(["hpcinfer-no-such-command-xyz"]) is None
