"""Checks before any engine starts: the model in the cache, the servers' model, --workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinfer.cluster import plan_placement, resolve_profile
from hpcinfer.engines.openai_engine import Target
from hpcinfer.errors import InputError, SpecError
from hpcinfer.run.policy import dispatcher_placement
from hpcinfer.run.preflight import check_model_present, served_model, workers_notes
from hpcinfer.spec import JobSpec
from hpcinfer.testing.stub_server import StubServer


def spec(**fields: object) -> JobSpec:
    return JobSpec.model_validate(fields)


def test_an_hf_id_missing_from_the_cache_names_what_and_where(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf")}
    with pytest.raises(InputError) as info:
        check_model_present(spec(model="meta-llama/Llama-3.1-8B"), tmp_path, env)
    message = str(info.value)
    assert "models--meta-llama--Llama-3.1-8B" in message
    assert str(tmp_path / "hf" / "hub") in message
    assert "huggingface-cli download meta-llama/Llama-3.1-8B" in message  # stage's help
    assert info.value.exit_code == 2


def test_an_hf_id_in_the_cache_passes(tmp_path: Path) -> None:
    (tmp_path / "hf" / "hub" / "models--org--name" / "snapshots").mkdir(parents=True)
    check_model_present(spec(model="org/name"), tmp_path, {"HF_HOME": str(tmp_path / "hf")})


def test_downloads_allowed_by_the_user_skip_the_cache_check(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    check_model_present(spec(model="org/name"), tmp_path, env)


def test_a_model_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no config\.json"):
        check_model_present(spec(model="./empty"), tmp_path, {})
    with pytest.raises(InputError, match="no such directory"):
        check_model_present(spec(model="./absent"), tmp_path, {})


def test_servers_models_are_not_looked_up_in_the_cache(tmp_path: Path) -> None:
    job = spec(model="org/name", engine={"kind": "openai"}, client={"urls": ["http://x:1"]})
    check_model_present(job, tmp_path, {"HF_HOME": str(tmp_path / "hf")})


def openai(model: str | None = None) -> JobSpec:
    return spec(model=model, engine={"kind": "openai"})


def test_the_one_served_model_is_the_default() -> None:
    with StubServer(model="served-a") as a, StubServer(model="served-a") as b:
        assert served_model(openai(), [Target(a.url), Target(b.url)]) == "served-a"
        assert served_model(openai("served-a"), [Target(a.url)]) == "served-a"


def test_a_model_the_servers_do_not_serve_lists_what_they_serve() -> None:
    with StubServer(model="served-a") as a, pytest.raises(SpecError) as info:
        served_model(openai("tiny"), [Target(a.url)])
    assert "'tiny'" in str(info.value) and "served-a" in str(info.value)
    assert a.url in str(info.value)


def test_servers_of_different_models_need_an_explicit_model() -> None:
    with StubServer(model="served-a") as a, StubServer(model="served-b") as b:
        targets = [Target(a.url), Target(b.url)]
        with pytest.raises(SpecError, match="different models") as info:
            served_model(openai(), targets)
        assert "served-a" in str(info.value) and "served-b" in str(info.value)
        with pytest.raises(SpecError, match=b.url):
            served_model(openai("served-a"), targets)


def test_servers_not_answering_are_left_to_the_dispatcher() -> None:
    assert served_model(openai("m"), [Target("http://127.0.0.1:9")]) == "m"
    assert served_model(openai(), [Target("http://127.0.0.1:9")]) is None


def test_more_workers_than_units_says_why_fewer_start() -> None:
    profile = resolve_profile("cpu")
    job = spec(workers={"count": 4, "unit_size": 64})
    placement = plan_placement(profile, workers=1)
    notes = workers_notes(job, dispatcher_placement(profile, 4), 2)
    assert len(notes) == 1 and "--workers 4" in notes[0] and "2 unit(s)" in notes[0]
    assert "only 2 worker(s) start" in notes[0] and "--unit-size" in notes[0]
    assert workers_notes(job, dispatcher_placement(profile, 4), 9) == []
    assert workers_notes(spec(), placement, 1) == []  # no --workers: nothing promised
