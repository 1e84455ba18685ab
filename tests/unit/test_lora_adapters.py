"""The job's LoRA adapter directories are checked before any engine starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcinfer.engines.lora_adapters import check_lora_adapters, slot_rank
from hpcinfer.errors import SpecError


def adapter(root: Path, name: str, config: object, weights: bool = True) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    if weights:
        (directory / "adapter_model.safetensors").write_bytes(b"{}")
    return directory


GOOD = {"r": 24, "lora_alpha": 8, "target_modules": ["q_proj"]}


def test_good_adapters_give_the_slot_rank_vllm_needs(tmp_path: Path) -> None:
    adapter(tmp_path, "a", GOOD)
    adapter(tmp_path, "b", {**GOOD, "r": 4})
    assert check_lora_adapters({"a": "a", "b": str(tmp_path / "b")}, tmp_path) == 32
    assert check_lora_adapters({}, tmp_path) is None
    assert [slot_rank(r) for r in (1, 2, 16, 17, 300)] == [1, 8, 16, 32, 320]


@pytest.mark.parametrize(
    ("config", "weights", "says"),
    [
        (GOOD, False, r"holds adapter_config.json but no weights \(adapter_model.safetensors"),
        ({**GOOD, "r": 0}, True, r"adapter_config.json has no positive whole rank 'r'"),
        ({"r": 4}, True, r"adapter_config.json names no 'target_modules'"),
        ({**GOOD, "r": 1024}, True, r"has rank r=1024; vLLM takes LoRA ranks up to 512"),
    ],
)
def test_a_bad_adapter_names_the_file_and_the_fix(
    tmp_path: Path, config: object, weights: bool, says: str
) -> None:
    adapter(tmp_path, "sql", config, weights)
    with pytest.raises(SpecError, match=says) as caught:
        check_lora_adapters({"sql": "sql"}, tmp_path)
    assert str(caught.value).startswith("engine.lora_adapters.sql=sql: ")


def test_a_missing_or_unreadable_adapter_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"is not a directory; give the directory a PEFT LoRA"):
        check_lora_adapters({"sql": "nope"}, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"empty/adapter_config.json does not exist"):
        check_lora_adapters({"sql": "empty"}, tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(SpecError, match=r"is not readable JSON"):
        check_lora_adapters({"sql": str(broken)}, tmp_path)
