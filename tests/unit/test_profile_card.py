"""`hpcinfer profile card`: the CCL-Bench workload card, with the device count multiplied
from the plan (EP not multiplied in) and checked against the rank trace files present."""

from __future__ import annotations

from pathlib import Path

import yaml

from hpcinfer.profile.card import CARD_FILE, write_card
from tests.harness import InProcessCLI
from tests.profile_runs import profile_result, write_run


def card_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / CARD_FILE).read_text())


def test_tp4_ep4_is_four_devices(tmp_path: Path, main_cli: InProcessCLI) -> None:
    run_dir = write_run(tmp_path, profile_result("moe_tp4_ep4", "org/moe", tp=4, ep=4))
    ran = main_cli("profile", "card", str(run_dir))
    assert ran.code == 0, ran.output
    assert ran.out.strip() == str(run_dir / CARD_FILE)
    card = card_of(run_dir)
    assert card["workload"]["hardware"]["xpu_spec"]["total_count"] == 4
    assert card["workload"]["hardware"]["xpu_spec"]["count_per_node"] == 4
    plan = card["Model-executor"]["model_plan_parallelization"]
    assert (plan["tp"], plan["ep"], plan["pp"], plan["dp_replicate"]) == (4, 4, 1, 1)
    assert card["workload"]["model"]["moe"] is True  # ep > 1 and the model is not readable


def test_dp2_tp2_pp2_is_eight_devices_on_two_nodes(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, profile_result("dense_8", dp_replicate=2, tp=2, pp=2))
    card = card_of(write_card(run_dir).parent)
    xpu = card["workload"]["hardware"]["xpu_spec"]
    assert (xpu["total_count"], xpu["count_per_node"]) == (8, 4)
    assert xpu["type"] == "GPU" and xpu["model"] == "nvidia_a100_sxm4_40gb"


def test_card_takes_schema_fields_and_versions_from_the_run(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, profile_result(tp=2))
    card = card_of(write_card(run_dir).parent)
    assert set(card) >= {
        "version",
        "description",
        "hf_url",
        "trace_url",
        "workload",
        "Model-executor",
        "metric_source",
    }
    assert card["hf_url"] == "https://huggingface.co/meta-llama/Llama-3.1-8B"
    assert card["workload"]["model"]["phase"] == "inference"
    assert card["workload"]["model"]["precision"] == "bf16"
    assert card["workload"]["model"]["moe"] is False
    assert card["workload"]["data"]["batch_size"] == 4
    assert card["workload"]["hardware"]["driver_version"] == "cuda_12.4"
    assert card["workload"]["hardware"]["network_topo"]["topology"] == "slingshot"
    executor = card["Model-executor"]
    assert executor["framework"] == {
        "name": "vllm",
        "version": "0.32.0",
        "compiler_tool_selection": None,
    }
    assert executor["communication_library"]["name"] == "NCCL"
    assert executor["communication_library"]["version"] == "2.21.5"
    assert card["metric_source"]["traces"] == ["json"]
    assert card["trace_url"] == str(run_dir.resolve())


def test_a_missing_rank_file_is_named_and_no_card_is_written(
    tmp_path: Path, main_cli: InProcessCLI
) -> None:
    run_dir = write_run(tmp_path, profile_result("tp4", tp=4), skip_ranks=(2,))
    ran = main_cli("profile", "card", str(run_dir))
    assert ran.code == 2
    assert "kineto_trace_2.json.gz missing" in ran.err
    assert "rank(s) 2 have no trace" in ran.err
    assert not (run_dir / CARD_FILE).exists()


def test_a_run_folder_without_profile_json_is_named(tmp_path: Path, main_cli: InProcessCLI) -> None:
    ran = main_cli("profile", "card", str(tmp_path))
    assert ran.code == 2
    assert str(tmp_path / "profile.json") in ran.err


def test_a_library_without_a_version_keeps_its_whole_name(tmp_path: Path) -> None:
    result = profile_result(tp=2)
    result.versions.communication_library = "gloo (torch.distributed)"
    card = card_of(write_card(write_run(tmp_path, result)).parent)
    library = card["Model-executor"]["communication_library"]
    assert (library["name"], library["version"]) == ("gloo (torch.distributed)", None)


def test_a_cpu_run_says_it_has_no_driver(tmp_path: Path) -> None:
    result = profile_result(tp=2)
    result.versions.driver = None
    result.hardware.device_type = "cpu"
    result.hardware.network_topology = None
    card = card_of(write_card(write_run(tmp_path, result)).parent)
    assert card["workload"]["hardware"]["driver_version"] == "n/a (CPU)"
    assert card["workload"]["hardware"]["network_topo"]["topology"] is None
    # a GPU run whose driver was not found says nothing rather than guessing
    result.hardware.device_type = "cuda"
    card = card_of(write_card(write_run(tmp_path / "gpu", result)).parent)
    assert card["workload"]["hardware"]["driver_version"] is None
