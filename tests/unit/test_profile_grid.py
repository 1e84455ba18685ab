"""`hpcinfer profile grid`: grids and presets into experiment configs, filtered, and checked
against what vLLM can run (EP and DP reach it or are refused with the reason)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.errors import SpecError
from hpcinfer.profile.experiment import load_experiment, output_dir_of
from hpcinfer.profile.grid import expand_grid, grid_from_data, load_grid, write_experiments
from hpcinfer.profile.grid_filter import FilterSyntaxError, parse_filter
from tests.harness import InProcessCLI

NAMES = frozenset({"tp", "pp", "devices"})


def model_folder(tmp_path: Path, **config: Any) -> str:
    """A local model folder whose config.json the checks read."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"num_attention_heads": 32, "num_hidden_layers": 32, **config}
    (folder / "config.json").write_text(json.dumps(figures))
    return str(folder)


def expand(data: dict[str, Any], devices_per_node: int = 4) -> Any:
    return expand_grid(grid_from_data(data, "grid.yaml"), "grid.yaml", devices_per_node)


def test_filter_language_evaluates_arithmetic_and_comparisons() -> None:
    rule = parse_filter("tp * pp <= devices and not (tp == 3 or pp % 2 == 1 and pp > 1)", NAMES)
    assert rule.holds({"tp": 2, "pp": 2, "devices": 4})
    assert not rule.holds({"tp": 4, "pp": 2, "devices": 4})
    assert not rule.holds({"tp": 3, "pp": 1, "devices": 4})
    assert not rule.holds({"tp": 1, "pp": 3, "devices": 4})
    assert parse_filter("1 < tp < 4", NAMES).holds({"tp": 2})
    assert not parse_filter("1 < tp < 4", NAMES).holds({"tp": 4})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("__import__('os').system('true')", "__import__"),
        ("tp.real > 1", "tp.real"),
        ("[tp][0] == 1", "[tp][0]"),
        ("gpus >= tp", "unknown name 'gpus'"),
        ("tp ** 40 > 1", "tp ** 40"),
        ("tp <=", "not an expression"),
        ("'a' < 'b'", "only numbers"),
    ],
)
def test_filter_refuses_anything_but_the_small_language(text: str, named: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(text, NAMES)
    assert named in str(caught.value)


def test_tp_scaling_preset_writes_e1_1_to_e1_3(tmp_path: Path, main_cli: InProcessCLI) -> None:
    out = tmp_path / "experiments"
    ran = main_cli("profile", "grid", "--preset", "tp-scaling-llama-8b", "-o", str(out))
    assert ran.code == 0, ran.output
    files = sorted(out.glob("*.yaml"))
    assert [f.name for f in files] == [
        "E1.1_llama8b_tp1.yaml",
        "E1.2_llama8b_tp2.yaml",
        "E1.3_llama8b_tp4.yaml",
    ]
    configs = [load_experiment(f) for f in files]
    assert [c.parallelism.tp for c in configs] == [1, 2, 4]
    assert {c.model.name for c in configs} == {"meta-llama/Llama-3.1-8B"}
    assert {c.model.precision for c in configs} == {"bfloat16"}
    for path, config in zip(files, configs, strict=True):
        assert str(config.output_dir) == config.experiment_id
        assert output_dir_of(config, path) == (out / config.experiment_id).resolve()
    assert "tensor_parallel_size=4" in files[2].read_text()


def test_cpu_tiny_preset_is_the_tiny_model_at_tp_1_and_2(
    tmp_path: Path, main_cli: InProcessCLI
) -> None:
    ran = main_cli("profile", "grid", "--preset", "cpu-tiny", "-o", str(tmp_path), "--json")
    assert ran.code == 0, ran.output
    document = json.loads(ran.out)
    configs = [load_experiment(Path(p)) for p in document["written"]]
    assert [(c.model.name, c.parallelism.tp) for c in configs] == [("tiny", 1), ("tiny", 2)]
    assert all(c.data.batch_size <= 8 and c.data.seq_len <= 64 for c in configs)


def test_filter_keeps_only_plans_that_fit_the_nodes(tmp_path: Path) -> None:
    grid = {
        "models": ["m/x"],
        "tp": [1, 2, 4, 8],
        "pp": [1, 2],
        "nodes": 1,
        "filter": "tp * pp <= devices",
    }
    expansion = expand(grid, devices_per_node=4)
    kept = [(e.config.parallelism.tp, e.config.parallelism.pp) for e in expansion.experiments]
    assert kept == [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1)]
    assert len(expansion.filtered) == 3
    two_nodes = expand({**grid, "nodes": 2}, devices_per_node=4)
    assert len(two_nodes.experiments) == 7
    written = write_experiments(expansion, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"x_tp{tp}_pp{pp}.yaml" for tp, pp in kept)


def test_ep_reaches_vllm_on_an_moe_model_and_is_refused_on_a_dense_one(tmp_path: Path) -> None:
    moe = model_folder(tmp_path / "moe", num_local_experts=8)
    expansion = expand({"models": [moe], "tp": [4], "ep": [1, 2, 4]})
    by_ep = {e.config.parallelism.ep: e.vllm.engine_args for e in expansion.experiments}
    assert by_ep[4]["enable_expert_parallel"] is True
    assert by_ep[1]["enable_expert_parallel"] is False
    assert [i for i, _ in expansion.refused] == ["model_tp4_ep2"]
    assert "set ep: 4 or ep: 1" in expansion.refused[0][1][0]

    dense = model_folder(tmp_path / "dense")
    refused = expand({"models": [dense], "tp": [4], "ep": [4]})
    assert refused.experiments == []
    assert "dense" in refused.refused[0][1][0]


def test_dp_is_refused_with_the_reason_and_ep_spans_tp_times_dp() -> None:
    expansion = expand({"models": ["m/x"], "tp": [2], "dp": [1, 2], "ep": [1, 4]})
    assert [e.config.experiment_id for e in expansion.experiments] == ["x_tp2_dp1_ep1"]
    refused = dict(expansion.refused)
    assert any("LLM(data_parallel_size > 1)" in r for r in refused["x_tp2_dp2_ep1"])
    # ep=4 on tp=2 x dp=2 would be vLLM's EP size; only DP stands in its way
    assert len(refused["x_tp2_dp2_ep4"]) == 1
    assert any("set ep: 2 or ep: 1" in r for r in refused["x_tp2_dp1_ep4"])


def test_tp_that_does_not_divide_the_heads_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, num_attention_heads=6)
    expansion = expand({"models": [folder], "tp": [2, 4]})
    assert [e.config.parallelism.tp for e in expansion.experiments] == [2]
    assert "6 attention heads" in expansion.refused[0][1][0]


@pytest.mark.parametrize(
    ("grid", "field", "fix"),
    [
        ({"models": ["m"], "tp": [0, 2]}, "tp", "1 or more"),
        ({"models": ["m"], "tpp": [2]}, "tpp", "Extra inputs"),
        ({"models": []}, "models", "at least 1"),
        ({"models": ["m"], "filter": "tp < gpus"}, "filter[0]", "unknown name 'gpus'"),
        ({"models": ["m"], "id": "{model}_{tensor}"}, "id", "unknown placeholder {tensor}"),
        ({"models": ["m"], "id": "run {tp}"}, "id", "letters, digits"),
        ({"models": ["m"], "tp": [1, 2], "id": "same"}, "id", "both get the id 'same'"),
    ],
)
def test_bad_grid_names_file_field_and_fix(
    tmp_path: Path, grid: dict[str, Any], field: str, fix: str
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(SpecError) as caught:
        expand_grid(load_grid(path), str(path), 4, check_models=False)
    message = str(caught.value)
    assert str(path) in message and field in message and fix in message


def test_cli_says_why_nothing_was_written(tmp_path: Path, main_cli: InProcessCLI) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump(
            {"models": ["m/x"], "tp": [8], "filter": "tp <= devices", "profile": "polaris"}
        )
    )
    ran = main_cli("profile", "grid", str(path), "-o", str(tmp_path / "out"))
    assert ran.code == 2
    assert "no experiment left" in ran.err and "tp <= devices" in ran.err
    assert not (tmp_path / "out").exists()
