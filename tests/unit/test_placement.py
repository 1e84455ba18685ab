"""Placement of workers onto devices and the environment that binds them (REFERENCE §1)."""

from __future__ import annotations

import pytest

from hpcinfer.cluster.binding import binding_env, cpu_affinity
from hpcinfer.cluster.devices import Device, DeviceGroup, format_core_list
from hpcinfer.cluster.hardware import HardwareProfile, load_profile
from hpcinfer.cluster.placement import (
    PlacementPlan,
    device_order,
    gpu_slot,
    plan_placement,
)
from hpcinfer.errors import HardwareError


def masks(plan: PlacementPlan) -> list[str | None]:
    return [p.env["ZE_AFFINITY_MASK"] for p in plan.placements]


def cuda(plan: PlacementPlan) -> list[str | None]:
    return [p.env["CUDA_VISIBLE_DEVICES"] for p in plan.placements]


def cpu_profile(cores: int) -> HardwareProfile:
    return HardwareProfile(name=f"cpu{cores}", vendor="cpu", cores_per_node=cores)


def binds(plan: PlacementPlan) -> list[str | None]:
    return [p.env["VLLM_CPU_OMP_THREADS_BIND"] for p in plan.placements]


AURORA = load_profile("aurora")
POLARIS = load_profile("polaris")
SEED_NODE = HardwareProfile(name="tile-example", vendor="intel", gpus_per_node=3, tiles_per_gpu=2)


# --- gpu_tile_compact.sh's mapping --------------------------------------------------------


def test_gpu_tile_compact_example_three_gpus_two_tiles_seven_ranks() -> None:
    plan = plan_placement(SEED_NODE, workers=7)
    got = [(p.group.devices[0].gpu, p.group.devices[0].tile) for p in plan.placements]
    assert got == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (0, 0)]
    assert masks(plan) == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "0.0"]
    assert [p.shared for p in plan.placements] == [True, False, False, False, False, False, True]
    assert any("shared" in w for w in plan.warnings)


def test_gpu_slot_is_the_seed_formula() -> None:
    for rank in range(40):
        assert gpu_slot(rank, 3, 2) == ((rank // 2) % 3, rank % 2)
        assert gpu_slot(rank, 3, 2, "scatter") == (rank % 3, (rank // 3) % 2)


def test_aurora_twelve_workers_compact() -> None:
    plan = plan_placement(AURORA, workers=12)
    assert masks(plan) == [f"{g}.{t}" for g in range(6) for t in range(2)]
    assert masks(plan)[:3] == ["0.0", "0.1", "1.0"]
    assert masks(plan)[-1] == "5.1"
    assert plan.warnings == []
    assert plan.idle_devices == []
    assert not any(p.shared for p in plan.placements)


def test_aurora_default_is_one_worker_per_tile() -> None:
    assert len(plan_placement(AURORA).placements) == 12


def test_aurora_binding_env_intel() -> None:
    env = plan_placement(AURORA).placements[3].env
    assert env == {
        "ZE_AFFINITY_MASK": "1.1",
        "ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1",
        "EnableWalkerPartition": None,
    }
    assert "EnableWalkerPartition" in env and env["EnableWalkerPartition"] is None


def test_aurora_thirteen_workers_wrap() -> None:
    plan = plan_placement(AURORA, workers=13)
    assert masks(plan)[12] == "0.0"
    assert plan.placements[12].shared and plan.placements[0].shared
    assert not plan.placements[1].shared
    assert any("13 workers on 12 device groups" in w and "shared" in w for w in plan.warnings)


def test_aurora_scatter_order() -> None:
    plan = plan_placement(AURORA, mode="scatter")
    expected = [f"{g}.0" for g in range(6)] + [f"{g}.1" for g in range(6)]
    assert masks(plan) == expected
    assert plan.mode == "scatter"


def test_aurora_tp2_keeps_the_tiles_of_one_gpu_together() -> None:
    plan = plan_placement(AURORA, tp=2)
    assert masks(plan) == [f"{g}.0,{g}.1" for g in range(6)]
    assert plan.placements[0].group.labels == ["gpu0.tile0", "gpu0.tile1"]
    assert plan.warnings == []


def test_aurora_tp2_scatter_pairs_tiles_across_gpus() -> None:
    plan = plan_placement(AURORA, tp=2, mode="scatter")
    assert masks(plan)[:3] == ["0.0,1.0", "2.0,3.0", "4.0,5.0"]
    assert masks(plan)[3:] == ["0.1,1.1", "2.1,3.1", "4.1,5.1"]


def test_aurora_tp8_leaves_four_tiles_idle_and_says_so() -> None:
    plan = plan_placement(AURORA, tp=8)
    assert len(plan.placements) == 1
    assert masks(plan) == ["0.0,0.1,1.0,1.1,2.0,2.1,3.0,3.1"]
    assert [d.label for d in plan.idle_devices] == [
        "gpu4.tile0",
        "gpu4.tile1",
        "gpu5.tile0",
        "gpu5.tile1",
    ]
    [warning] = plan.warnings
    assert "TP=8" in warning and "4 devices" in warning
    assert "gpu4.tile0, gpu4.tile1, gpu5.tile0, gpu5.tile1" in warning
    assert "1, 2, 3, 4, 6, 12" in warning


def test_flat_hierarchy_uses_flat_indices() -> None:
    flat = AURORA.model_copy(update={"flat_hierarchy": True})
    plan = plan_placement(flat)
    assert masks(plan) == [str(i) for i in range(12)]
    assert plan.placements[0].env["ZE_FLAT_DEVICE_HIERARCHY"] == "FLAT"
    assert plan.placements[0].env["EnableWalkerPartition"] is None
    assert masks(plan_placement(flat, tp=2))[:2] == ["0,1", "2,3"]
    assert masks(plan_placement(flat, tp=2, mode="scatter"))[0] == "0,2"


def test_single_tile_intel_mask_is_the_gpu_index() -> None:
    plan = plan_placement(load_profile("arc-a770"))
    assert masks(plan) == ["0"]
    assert plan.placements[0].group.labels == ["gpu0"]


def test_polaris_tp2() -> None:
    plan = plan_placement(POLARIS, tp=2)
    assert cuda(plan) == ["0,1", "2,3"]
    assert plan.placements[0].env == {"CUDA_VISIBLE_DEVICES": "0,1"}


def test_polaris_default_one_gpu_each() -> None:
    assert cuda(plan_placement(POLARIS)) == ["0", "1", "2", "3"]


def test_amd_binding() -> None:
    amd = HardwareProfile(name="mi250", vendor="amd", gpus_per_node=8)
    env = plan_placement(amd, tp=4).placements[1].env
    assert env == {"ROCR_VISIBLE_DEVICES": "4,5,6,7", "HIP_VISIBLE_DEVICES": None}


def test_tp_larger_than_node_is_an_error() -> None:
    with pytest.raises(HardwareError, match="TP=16 needs 16 devices; aurora has 12"):
        plan_placement(AURORA, tp=16)
    with pytest.raises(HardwareError, match="TP=5 needs 5 devices"):
        plan_placement(POLARIS, tp=5)


@pytest.mark.parametrize(
    "kwargs",
    [{"tp": 0}, {"workers": 0}, {"mode": "spread"}, {"local_rank_offset": -1}],
)
def test_bad_arguments_are_hardware_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(HardwareError):
        plan_placement(AURORA, **kwargs)  # type: ignore[arg-type]


def test_fewer_workers_than_groups_leaves_groups_idle() -> None:
    plan = plan_placement(POLARIS, workers=2)
    assert cuda(plan) == ["0", "1"]
    assert [d.label for d in plan.idle_devices] == ["gpu2", "gpu3"]
    assert any("2 groups stay idle" in w for w in plan.warnings)


def test_local_rank_offset_shifts_the_rank() -> None:
    plan = plan_placement(AURORA, workers=1, local_rank_offset=5)
    assert masks(plan) == ["2.1"]
    assert not plan.placements[0].shared
    wrapped = plan_placement(AURORA, workers=1, local_rank_offset=12)
    assert masks(wrapped) == ["0.0"] and wrapped.placements[0].shared


def test_profile_env_is_merged_but_binding_wins() -> None:
    site = POLARIS.model_copy(update={"env": {"NCCL_DEBUG": "WARN", "CUDA_VISIBLE_DEVICES": "7"}})
    plan = plan_placement(site)
    assert plan.placements[1].env == {"NCCL_DEBUG": "WARN", "CUDA_VISIBLE_DEVICES": "1"}
    assert plan.table_rows()[1]["env"] == "CUDA_VISIBLE_DEVICES=1"


def test_table_rows() -> None:
    rows = plan_placement(AURORA, tp=2).table_rows()
    assert rows[0] == {
        "worker": "0",
        "devices": "gpu0.tile0,gpu0.tile1",
        "env": "ZE_AFFINITY_MASK=0.0,0.1 ZE_ENABLE_PCI_ID_DEVICE_ORDER=1 -EnableWalkerPartition",
    }
    assert len(rows) == 6


def test_device_order_is_a_permutation_of_the_node() -> None:
    for mode in ("compact", "scatter"):
        order = device_order(AURORA, mode)
        assert sorted(d.index for d in order) == list(range(12))
        assert all(d.index == (d.gpu or 0) * 2 + (d.tile or 0) for d in order)


# --- CPU: cores are devices, a group is a core set ------------------------------------


def test_cpu_two_cores_default_one_worker_per_core() -> None:
    plan = plan_placement(cpu_profile(2))
    assert binds(plan) == ["0", "1"]
    assert [p.env["OMP_NUM_THREADS"] for p in plan.placements] == ["1", "1"]
    assert [p.group.label for p in plan.placements] == ["core0", "core1"]
    assert plan.warnings == []


def test_cpu_two_cores_tp2() -> None:
    plan = plan_placement(cpu_profile(2), tp=2)
    assert len(plan.placements) == 1
    assert binds(plan) == ["0|1"]
    assert plan.placements[0].env["OMP_NUM_THREADS"] == "1"
    assert cpu_affinity(plan.placements[0].group) == {0, 1}


def test_cpu_two_cores_one_worker_gets_both() -> None:
    plan = plan_placement(cpu_profile(2), workers=1)
    assert binds(plan) == ["0-1"]
    assert plan.placements[0].env["OMP_NUM_THREADS"] == "2"
    assert plan.idle_devices == []
    assert plan.warnings == []


def test_cpu_eight_cores_two_workers_tp2() -> None:
    plan = plan_placement(cpu_profile(8), workers=2, tp=2)
    assert binds(plan) == ["0-1|2-3", "4-5|6-7"]
    assert [p.env["OMP_NUM_THREADS"] for p in plan.placements] == ["2", "2"]
    assert [cpu_affinity(p.group) for p in plan.placements] == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert plan.table_rows()[1]["devices"] == "cores 4-7"
    assert plan.warnings == []


def test_cpu_eight_cores_tp2_default() -> None:
    plan = plan_placement(cpu_profile(8), tp=2)
    assert binds(plan) == ["0|1", "2|3", "4|5", "6|7"]


def test_cpu_uneven_split_warns_about_idle_cores() -> None:
    plan = plan_placement(cpu_profile(7), workers=2)
    assert binds(plan) == ["0-2", "3-5"]
    assert [d.label for d in plan.idle_devices] == ["core6"]
    assert any("core6" in w for w in plan.warnings)


def test_cpu_more_workers_than_cores_share() -> None:
    plan = plan_placement(cpu_profile(2), workers=3)
    assert binds(plan) == ["0", "1", "0"]
    assert plan.placements[2].shared


def test_cpu_tp_larger_than_cores_is_an_error() -> None:
    with pytest.raises(HardwareError, match="TP=4 needs 4 devices"):
        plan_placement(cpu_profile(2), tp=4)


def test_cpu_detected_profile_uses_real_core_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {8, 9, 10, 11})
    plan = plan_placement(load_profile("cpu"), workers=1, tp=2)
    assert binds(plan) == ["8-9|10-11"]
    assert cpu_affinity(plan.placements[0].group) == {8, 9, 10, 11}


def test_cpu_binding_needs_an_even_split() -> None:
    group = DeviceGroup(tuple(Device(i, None, None) for i in range(3)))
    with pytest.raises(HardwareError, match="evenly"):
        binding_env(cpu_profile(3), group, tp=2)


def test_cpu_affinity_is_none_for_gpu_groups() -> None:
    assert cpu_affinity(plan_placement(POLARIS).placements[0].group) is None


@pytest.mark.parametrize(
    ("cores", "text"),
    [([0], "0"), ([0, 1, 2, 3], "0-3"), ([0, 2], "0,2"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8")],
)
def test_format_core_list(cores: list[int], text: str) -> None:
    assert format_core_list(cores) == text


def test_apply_env_sets_values_and_unsets_none() -> None:
    from hpcinfer.cluster import apply_env

    base = {"ZE_AFFINITY_MASK": "5", "EnableWalkerPartition": "1", "PATH": "/bin"}
    env = apply_env(base, {"ZE_AFFINITY_MASK": "0.0", "EnableWalkerPartition": None})
    assert env == {"ZE_AFFINITY_MASK": "0.0", "PATH": "/bin"}
    assert base["EnableWalkerPartition"] == "1"  # the base is not changed
