"""Where a staged copy lives and what `hpcinfer run` must be given to read it (the Aurora vLLM
server scripts got this wrong)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcinfer.errors import InputError, SpecError
from hpcinfer.stage import staged_location
from hpcinfer.stage.layout import (
    check_placeholders,
    copy_dir,
    expand_target,
    hub_cache_candidates,
    resolve_source,
)
from tests.unit.test_stage_helpers import REVISION, make_hf_cache, make_model_dir


def test_directory_is_staged_under_its_own_name(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "models" / "Llama-8B")
    assert staged_location(str(model), "/local/scratch") == ("/local/scratch/Llama-8B", {})
    assert copy_dir("dir", str(model), "/local/scratch") == Path("/local/scratch/Llama-8B")


def test_relative_directory_and_relative_to_resolve_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model_dir(tmp_path / "models" / "opt")
    monkeypatch.chdir(tmp_path)
    arg, env = staged_location("models/opt", "stage")
    assert (arg, env) == (str(tmp_path / "stage" / "opt"), {})
    assert staged_location("./models/opt/", "/tmp/x")[0] == "/tmp/x/opt"


def test_hf_id_keeps_the_id_and_points_both_hf_variables_at_the_copy() -> None:
    arg, env = staged_location("meta-llama/Llama-3.1-8B", "/local/scratch/hf")
    assert arg == "meta-llama/Llama-3.1-8B"
    assert env == {"HF_HOME": "/local/scratch/hf", "HF_HUB_CACHE": "/local/scratch/hf/hub"}
    copy = copy_dir("hf", "meta-llama/Llama-3.1-8B", "/local/scratch/hf")
    assert copy == Path("/local/scratch/hf/hub/models--meta-llama--Llama-3.1-8B")


def test_placeholders_are_filled_per_rank_and_unknown_ones_refused() -> None:
    assert expand_target("/tmp/{hostname}/{rank}-{node}", rank=3, node=1, hostname="x1") == (
        "/tmp/x1/3-1"
    )
    with pytest.raises(SpecError, match=r"unknown placeholder \{local_rank\}"):
        check_placeholders("/tmp/{local_rank}")
    with pytest.raises(SpecError, match="placeholders"):
        check_placeholders("/tmp/{rank")


def test_missing_model_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such directory") as info:
        resolve_source(str(tmp_path / "nope"), {}, tmp_path)
    assert str(tmp_path / "nope") in str(info.value)


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(InputError, match=r"no config\.json"):
        resolve_source(str(tmp_path / "weights"), {}, tmp_path)


def test_hf_id_missing_from_the_cache_names_where_it_looked_and_the_fix(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf")}
    with pytest.raises(InputError) as info:
        resolve_source("org/absent", env, tmp_path)
    message = str(info.value)
    assert "models--org--absent" in message
    assert str(tmp_path / "hf" / "hub") in message
    assert "huggingface-cli download org/absent" in message


def test_hf_id_is_found_where_the_hf_libraries_look(tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "plain")
    in_home = make_hf_cache(tmp_path / "home" / "hub", "org/m", source)
    in_cache = make_hf_cache(tmp_path / "cache", "org/m", source)
    found = resolve_source("org/m", {"HF_HOME": str(tmp_path / "home")}, tmp_path)
    assert (found.kind, found.root, found.revision) == ("hf", in_home, REVISION)
    env = {"HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "cache")}
    assert resolve_source("org/m", env, tmp_path).root == in_cache  # HF_HUB_CACHE wins


def test_hf_home_set_to_a_hub_folder_still_finds_the_model(tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "plain")
    repo = make_hf_cache(tmp_path / "weights" / "hub", "org/m", source)
    env = {"HF_HOME": str(tmp_path / "weights" / "hub")}
    assert resolve_source("org/m", env, tmp_path).root == repo
    assert hub_cache_candidates(env)[-1] == tmp_path / "weights" / "hub"


def test_broken_ref_is_reported(tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "plain")
    repo = make_hf_cache(tmp_path / "hf" / "hub", "org/m", source)
    (repo / "refs" / "main").write_text("f" * 40, encoding="utf-8")
    with pytest.raises(InputError, match="refs/main names snapshot"):
        resolve_source("org/m", {"HF_HOME": str(tmp_path / "hf")}, tmp_path)


def test_text_that_is_neither_path_nor_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither a directory nor a Hugging Face id"):
        resolve_source("a/b/c", {}, tmp_path)
    with pytest.raises(SpecError, match="MODEL is empty"):
        resolve_source("", {}, tmp_path)


def test_staged_location_is_pure(tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    staged_location("org/m", str(tmp_path / "new"))
    staged_location(str(tmp_path), str(tmp_path / "new2"))
    assert sorted(os.listdir(tmp_path)) == before
