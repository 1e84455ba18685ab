"""Spec loading (hpcinfer.core.spec_loading): spec file + inputs + flags + --set -> JobSpec,
with paths in a spec file read from its folder, as the command line and the library do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcinfer.cli.flags import FLAGS
from hpcinfer.core.spec_loading import load_job_spec, split_spec_and_inputs
from hpcinfer.errors import SpecError
from hpcinfer.inputs import PromptTemplate
from hpcinfer.spec import JobSpec


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def build(
    args: list[str],
    cwd: Path,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> JobSpec:
    """The command line's way: `[SPEC.yaml] [INPUT...]`, run-flag overrides, --set."""
    spec_file, inputs = split_spec_and_inputs(args)
    fields = {FLAGS[name].field: value for name, value in (overrides or {}).items()}
    return load_job_spec(spec_file, inputs, fields, sets or [], cwd)


# -- load_job_spec ----------------------------------------------------------------------------


def test_inputs_only(tmp_path: Path) -> None:
    spec = build(["a.txt", "dir/", "*.jsonl"], tmp_path)
    assert spec.inputs.paths == ["a.txt", "dir/", "*.jsonl"]


def test_first_yaml_is_the_spec_and_later_args_override_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "job.yaml", "model: m\ninputs:\n  paths: [from_spec.txt]\n")
    spec = build(["job.yaml", "x.txt", "y.txt"], tmp_path)
    assert spec.model == "m"
    assert spec.inputs.paths == ["x.txt", "y.txt"]


def test_yml_suffix_is_a_spec_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "job.yml", "sampling:\n  max_tokens: 5\n")
    assert build(["job.yml", "x.txt"], tmp_path).sampling.max_tokens == 5


def test_paths_in_a_spec_file_are_relative_to_the_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "jobs"
    write(
        sub / "job.yaml",
        "inputs:\n  paths: [p.txt, /abs/q.txt]\noutput:\n  dir: out\n",
    )
    spec = build(["jobs/job.yaml"], tmp_path)
    here = sub.resolve()
    assert spec.inputs.paths == [str(here / "p.txt"), "/abs/q.txt"]
    assert spec.output.dir == str(here / "out")


def test_a_single_path_string_in_a_spec_file_becomes_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "jobs" / "job.yaml", "inputs:\n  paths: p.txt\n")
    spec = build(["jobs/job.yaml"], tmp_path)
    assert spec.inputs.paths == [str((tmp_path / "jobs").resolve() / "p.txt")]


def test_spec_in_the_current_directory_keeps_paths_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "job.yaml", "inputs:\n  paths: [p.txt]\n")
    assert build(["job.yaml"], tmp_path).inputs.paths == ["p.txt"]


def test_spec_output_dir_is_relative_to_the_spec_even_with_cli_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "jobs" / "job.yaml", "inputs:\n  paths: [p.txt]\noutput:\n  dir: out\n")
    spec = build(["jobs/job.yaml", "other.txt"], tmp_path)
    assert spec.output.dir == str((tmp_path / "jobs").resolve() / "out")


def test_spec_template_file_is_relative_to_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "jobs" / "t.j2", "Q: {{ q }}")
    write(tmp_path / "jobs" / "job.yaml", "inputs:\n  paths: [p.jsonl]\n  template: '@t.j2'\n")
    spec = build(["jobs/job.yaml"], tmp_path)
    template = PromptTemplate.from_option(spec.inputs.template)
    assert template is not None and template.render({"q": "x"}) == "Q: x"


def test_flags_override_file_values_and_unset_flags_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "job.yaml",
        "sampling:\n  temperature: 0.9\n  top_k: 5\n  stop: [END]\nworkers:\n  unit_size: 7\n",
    )
    spec = build(
        ["job.yaml", "a.txt"],
        tmp_path,
        overrides={"temperature": 0.2, "top_k": None, "stop": [], "tp": 2, "export": ["text"]},
    )
    assert spec.sampling.temperature == 0.2
    assert spec.sampling.top_k == 5
    assert spec.sampling.stop == ["END"]
    assert spec.workers.unit_size == 7
    assert spec.engine.tensor_parallel_size == 2
    assert spec.output.exports == ["text"]


def test_set_works_for_any_field_and_wins_over_flags(tmp_path: Path) -> None:
    spec = build(
        ["a.txt"],
        tmp_path,
        overrides={"temperature": 0.2},
        sets=[
            "sampling.temperature=0.9",
            "workers.max_inflight=64",
            "engine.extra={block_size: 16}",
            "output.exports=[jsonl, text]",
            "inputs.id_field=uid",
            "time_limit=2h",
            "model=/models/x",
        ],
    )
    assert spec.sampling.temperature == 0.9
    assert spec.workers.max_inflight == 64
    assert spec.engine.extra == {"block_size": 16}
    assert spec.output.exports == ["jsonl", "text"]
    assert spec.inputs.id_field == "uid"
    assert spec.time_limit_seconds() == 7200
    assert spec.model == "/models/x"


def test_unknown_set_field_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        build(["a.txt"], tmp_path, sets=["sampling.temprature=0.5"])
    assert "sampling.temprature: unknown field" in str(info.value)
    assert "temperature" in str(info.value)


def test_errors_name_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "job.yaml", "workers:\n  placement: diagonal\n")
    with pytest.raises(SpecError) as info:
        build(["job.yaml"], tmp_path)
    assert "job.yaml is invalid" in str(info.value)
    assert "workers.placement" in str(info.value)


def test_a_second_yaml_argument_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", "{}\n")
    with pytest.raises(SpecError, match="only one spec file") as info:
        build(["a.yaml", "x.txt", "b.yaml"], tmp_path)
    assert "b.yaml" in str(info.value)
    with pytest.raises(SpecError, match="must come first"):
        build(["x.txt", "a.yaml"], tmp_path)


def test_a_library_user_gets_the_command_lines_path_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(tmp_path / "jobs" / "job.yaml", "model: ./m\ninputs:\n  paths: [p.txt]\n")
    spec = load_job_spec(tmp_path / "jobs" / "job.yaml", fields={"engine.dtype": "float16"})
    here = (tmp_path / "jobs").resolve()
    assert spec.model == str(here / "m") and spec.inputs.paths == [str(here / "p.txt")]
    assert spec.engine.dtype == "float16"
    with pytest.raises(SpecError, match=r"give the job spec as a \.yaml or \.yml file"):
        load_job_spec("prompts.txt")


# -- the default output directory -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prompts.txt"], "hpcinfer-out/prompts"),
        (["data/genes.tsv", "more.tsv"], "hpcinfer-out/genes"),
        (["prompts/"], "hpcinfer-out/prompts"),
        (["prompts/*.jsonl"], "hpcinfer-out/prompts"),
        (["*.txt"], "hpcinfer-out/job"),
        (["jobs/llama.yaml"], "hpcinfer-out/llama"),
        (["jobs/llama.yaml", "q.jsonl"], "hpcinfer-out/llama-q"),
    ],
)
def test_without_an_output_dir_a_job_gets_one_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "jobs" / "llama.yaml", "sampling:\n  max_tokens: 5\n")
    assert build(args, tmp_path).output.dir == expected


def test_two_different_jobs_get_different_default_dirs_and_a_rerun_the_same(
    tmp_path: Path,
) -> None:
    first, second = build(["a.txt"], tmp_path), build(["b.txt"], tmp_path)
    assert first.output.dir != second.output.dir
    assert build(["a.txt"], tmp_path).output.dir == first.output.dir


def test_an_output_dir_given_anywhere_wins_over_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "job.yaml", "output:\n  dir: mine\n")
    assert build(["job.yaml", "a.txt"], tmp_path).output.dir == "mine"
    assert build(["a.txt"], tmp_path, {"out": "flag"}).output.dir == "flag"
    assert build(["a.txt"], tmp_path, sets=["output.dir=set"]).output.dir == "set"


# -- --save-spec: a command line saved as a spec file ------------------------------------------


def test_a_saved_spec_loads_back_to_the_same_job_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcinfer.core.spec_loading import save_job_spec
    from hpcinfer.submit.prepare import absolute_spec

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data" / "a.tsv", "q\nx\n")
    write(tmp_path / "tpl" / "t.j2", "Q: {{ q }}")
    (tmp_path / "models" / "m").mkdir(parents=True)
    given = build(
        ["data/a.tsv"],
        tmp_path,
        {"template": "@tpl/t.j2", "max_tokens": 5, "model": "models/m", "api_key_env": "KEY"},
        sets=["engine.extra.enable_prefix_caching=true"],
    )
    saved = save_job_spec(given, "jobs/job.yaml", tmp_path)
    text = saved.read_text()
    assert "temperature" not in text, "only the fields the command line set"
    assert "../data/a.tsv" in text and "'@../tpl/t.j2'" in text and "../models/m" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = load_job_spec(saved, cwd=elsewhere)  # an absolute spec path, another directory
    assert absolute_spec(loaded, elsewhere) == absolute_spec(given, tmp_path)
    assert absolute_spec(build(["jobs/job.yaml"], tmp_path), tmp_path) == absolute_spec(
        given, tmp_path
    )


def test_save_spec_needs_a_yaml_name(tmp_path: Path) -> None:
    from hpcinfer.core.spec_loading import save_job_spec

    with pytest.raises(SpecError, match=r"\.yaml or \.yml"):
        save_job_spec(build(["a.txt"], tmp_path), "job.json", tmp_path)
