"""The job spec: defaults, validation messages, durations, --set, spec files and identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcinfer.errors import SpecError
from hpcinfer.spec import (
    DEFAULT_MAX_TOKENS,
    JobSpec,
    build_spec,
    digest_identity,
    load_spec_file,
    parse_set_option,
    set_dotted,
    spec_json_schema,
)


def spec_error(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        build_spec(data, "job.yaml")
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------------


def test_max_tokens_default_is_explicit_256_not_vllms_16() -> None:
    spec = build_spec({})
    assert DEFAULT_MAX_TOKENS == 256
    assert spec.sampling.max_tokens == 256


def test_defaults_of_an_empty_spec() -> None:
    spec = build_spec({})
    assert spec.model is None
    assert spec.engine.tensor_parallel_size == 1
    assert spec.sampling.temperature == 1.0
    assert spec.sampling.top_k is None
    assert spec.inputs.paths == []
    assert spec.inputs.format == "auto"
    assert spec.output.dir == "hpcinfer-out"
    assert spec.output.exports == ["jsonl"]
    assert spec.output.include_prompt is False
    assert spec.workers.placement == "compact"
    assert spec.workers.unit_size == 32
    assert spec.time_limit is None
    assert spec.time_limit_seconds() is None


def test_exports_are_deduplicated_keeping_order() -> None:
    spec = build_spec({"output": {"exports": ["text", "jsonl", "text"]}})
    assert spec.output.exports == ["text", "jsonl"]


# -- validation messages ----------------------------------------------------------------------


def test_unknown_top_level_field_names_it_and_lists_valid_fields() -> None:
    message = spec_error({"modle": "x"})
    assert "job.yaml" in message
    assert "modle: unknown field" in message
    for name in ("engine", "inputs", "model", "output", "sampling", "time_limit", "workers"):
        assert name in message


def test_unknown_nested_field_names_the_full_path_and_valid_fields_of_that_level() -> None:
    message = spec_error({"sampling": {"temprature": 0.5}})
    assert "sampling.temprature: unknown field" in message
    valid = message.split("valid fields here:", 1)[1]
    for name in ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop"):
        assert name in valid
    # the valid fields listed are those of `sampling`, not the top level
    assert "workers" not in valid


def test_unknown_field_two_levels_down() -> None:
    message = spec_error({"workers": {"unit_sise": 4}})
    assert "workers.unit_sise: unknown field" in message
    assert "unit_size" in message


def test_bad_literal_names_the_choices_and_the_value() -> None:
    message = spec_error({"workers": {"placement": "diagonal"}})
    assert "workers.placement" in message
    assert "'compact'" in message and "'scatter'" in message
    assert "'diagonal'" in message


def test_bad_export_format_names_the_choices() -> None:
    message = spec_error({"output": {"exports": ["jsonl", "csv"]}})
    assert "output.exports.1" in message
    assert "'parquet'" in message and "'csv'" in message


@pytest.mark.parametrize(
    ("data", "path", "shown"),
    [
        ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens", "(got 0)"),
        ({"sampling": {"top_p": 1.5}}, "sampling.top_p", "(got 1.5)"),
        ({"sampling": {"temperature": -1}}, "sampling.temperature", "(got -1)"),
        ({"engine": {"tensor_parallel_size": 0}}, "engine.tensor_parallel_size", "(got 0)"),
        ({"engine": {"memory_share": 2}}, "engine.memory_share", "(got 2)"),
        ({"workers": {"unit_size": -3}}, "workers.unit_size", "(got -3)"),
    ],
)
def test_out_of_range_values_name_path_and_value(
    data: dict[str, Any], path: str, shown: str
) -> None:
    message = spec_error(data)
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(path + ":"))
    assert shown in line


def test_every_problem_is_reported_at_once() -> None:
    message = spec_error({"sampling": {"max_tokens": 0}, "workers": {"placement": "x"}})
    assert "2 problems" in message
    assert "sampling.max_tokens" in message and "workers.placement" in message


# -- durations (the forms: tests/unit/test_durations.py) -----------------------------------


def test_time_limit_is_validated_in_the_spec() -> None:
    assert build_spec({"time_limit": "1h30m"}).time_limit_seconds() == 5400.0
    message = spec_error({"time_limit": "soon"})
    assert "time_limit" in message and "'soon'" in message


def test_time_limit_accepts_a_bare_number_of_seconds() -> None:
    key, value = parse_set_option("time_limit=90")
    data: dict[str, Any] = {}
    set_dotted(data, key, value)
    assert build_spec(data).time_limit_seconds() == 90.0


# -- --set ------------------------------------------------------------------------------------


def test_set_dotted_creates_levels_and_keeps_siblings() -> None:
    data: dict[str, Any] = {"sampling": {"temperature": 0.5}}
    set_dotted(data, "sampling.top_k", 20)
    set_dotted(data, "engine.extra.block_size", 16)
    set_dotted(data, "model", "m")
    assert data == {
        "sampling": {"temperature": 0.5, "top_k": 20},
        "engine": {"extra": {"block_size": 16}},
        "model": "m",
    }


def test_set_dotted_replaces_a_scalar_in_the_way() -> None:
    data: dict[str, Any] = {"sampling": 3}
    set_dotted(data, "sampling.seed", 1)
    assert data == {"sampling": {"seed": 1}}


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("sampling.top_k=20", "sampling.top_k", 20),
        ("sampling.temperature=0.7", "sampling.temperature", 0.7),
        ("sampling.ignore_eos=true", "sampling.ignore_eos", True),
        ("output.include_prompt=false", "output.include_prompt", False),
        ("output.exports=[jsonl, text]", "output.exports", ["jsonl", "text"]),
        ("sampling.stop=['a=b', c]", "sampling.stop", ["a=b", "c"]),
        ("model=/models/llama", "model", "/models/llama"),
        ("model=null", "model", None),
        ("inputs.template={{ q }}=x", "inputs.template", "{{ q }}=x"),
        (" workers.count =4", "workers.count", 4),
        ("model=", "model", ""),
    ],
)
def test_parse_set_option_types_values_as_yaml(item: str, key: str, value: Any) -> None:
    assert parse_set_option(item) == (key, value)


def test_parse_set_option_without_equals_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="FIELD=VALUE"):
        parse_set_option("sampling.top_k")


# -- spec files -------------------------------------------------------------------------------


def test_load_spec_file_reads_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model: m\nsampling:\n  max_tokens: 8\n", encoding="utf-8")
    assert load_spec_file(path) == {"model": "m", "sampling": {"max_tokens": 8}}


def test_load_spec_file_empty_is_an_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n", encoding="utf-8")
    assert load_spec_file(path) == {}


def test_load_spec_file_missing_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="does not exist") as info:
        load_spec_file(path)
    assert str(path) in str(info.value)


def test_load_spec_file_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec_file(path)
    assert str(path) in str(info.value)


def test_load_spec_file_list_instead_of_mapping_names_file_and_type(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- sampling\n", encoding="utf-8")
    with pytest.raises(SpecError, match="must hold a mapping") as info:
        load_spec_file(path)
    assert str(path) in str(info.value)
    assert "list" in str(info.value)


def test_load_spec_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model: caf\xe9\xff\n")
    with pytest.raises(SpecError, match="cannot be read") as info:
        load_spec_file(path)
    assert str(path) in str(info.value)


# -- identity ---------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "model": "m",
    "inputs": {"paths": ["a.txt"]},
    "workers": {"unit_size": 8, "count": 2},
    "engine": {"tensor_parallel_size": 1},
}


def digest(**changes: Any) -> str:
    data: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for dotted, value in changes.items():
        set_dotted(data, dotted.replace("__", "."), value)
    return digest_identity(build_spec(data).identity())


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"sampling__temperature": 0.1},
        {"sampling__max_tokens": 9},
        {"sampling__seed": 3},
        {"inputs__paths": ["b.txt"]},
        {"inputs__template": "Q: {{ q }}"},
        {"workers__unit_size": 9},
        {"engine__dtype": "float16"},
        {"engine__max_model_len": 512},
    ],
)
def test_identity_changes_with_what_decides_the_rows(change: dict[str, Any]) -> None:
    assert digest(**change) != digest()


@pytest.mark.parametrize(
    "change",
    [
        {"workers__count": 7},
        {"engine__tensor_parallel_size": 4},
        {"output__exports": ["jsonl", "text"]},
        {"output__dir": "elsewhere"},
        {"workers__max_inflight": 3},
        {"workers__placement": "scatter"},
        {"time_limit": "1h"},
    ],
)
def test_identity_ignores_what_a_resume_may_change(change: dict[str, Any]) -> None:
    assert digest(**change) == digest()


def test_digest_identity_is_stable_and_key_order_free() -> None:
    assert digest_identity({"a": 1, "b": [1, 2]}) == digest_identity({"b": [1, 2], "a": 1})
    assert len(digest_identity({})) == 64


# -- schema -----------------------------------------------------------------------------------


def test_spec_json_schema_has_the_top_level_properties() -> None:
    schema = spec_json_schema()
    assert set(schema["properties"]) == {
        "model",
        "engine",
        "sampling",
        "inputs",
        "output",
        "workers",
        "time_limit",
        "job",
        "client",
        "serve",
        "bench",
    }
    assert schema == JobSpec.model_json_schema()


def test_identity_leaves_out_defaults_so_new_fields_do_not_break_resume() -> None:
    identity = build_spec({"inputs": {"paths": ["p.txt"]}}).identity()
    assert identity["inputs"] == {"paths": ["p.txt"]}
    assert identity["sampling"] == {}
    assert "max_tokens_field" not in identity["inputs"]


@pytest.mark.parametrize(
    ("field", "text", "seconds"),
    [
        ("serve.ready_timeout_s", "15m", 900.0),
        ("client.request_timeout_s", "1.5h", 5400.0),
        ("client.all_down_s", "00:02:00", 120.0),
        ("client.connect_timeout_s", "30", 30.0),
    ],
)
def test_duration_fields_take_every_form_the_time_flags_take(
    field: str, text: str, seconds: float
) -> None:
    section, name = field.split(".")
    spec = build_spec({section: {name: text}})
    assert getattr(getattr(spec, section), name) == seconds


def test_a_bad_duration_field_names_the_field_and_the_forms() -> None:
    with pytest.raises(SpecError) as info:
        build_spec({"serve": {"ready_timeout_s": "soon"}})
    assert "serve.ready_timeout_s" in str(info.value) and "1.5h" in str(info.value)
