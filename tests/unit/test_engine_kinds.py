"""The engine-kind registry: generic job and worker code uses any registered kind by name."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import get_args

import pytest

from hpcinfer.cluster import resolve_profile
from hpcinfer.engines.base import Engine
from hpcinfer.engines.factory import start_engine
from hpcinfer.engines.kinds import (
    ENGINE_KIND_ENV,
    EngineKind,
    engine_kind,
    engine_kind_names,
    register_engine_kind,
    unregister_engine_kind,
)
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.errors import SpecError
from hpcinfer.records import Record, Result
from hpcinfer.run.policy import engine_setup, engine_vars_for, job_placement, max_inflight
from hpcinfer.spec import EngineSpec, JobSpec, build_spec


class EchoEngine:
    """Generates nothing: enough to show which engine the worker's factory started."""

    def __init__(self, setup: EngineSetup) -> None:
        self.model_name = setup.model_name

    def submit(self, records: Sequence[Record]) -> list[Result]:
        return []

    def poll(self) -> list[Result]:
        return []

    def inflight(self) -> int:
        return 0

    def close(self) -> None:
        return None


class EchoKind(EngineKind):
    """A kind no shipped code names: unbound workers that need one variable."""

    name = "echo"
    needs_devices = False

    def worker_env(self, setup: EngineSetup) -> dict[str, str]:
        return {"ECHO_MODEL": setup.model_name or "-"}

    def start(self, setup: EngineSetup) -> Engine:
        return EchoEngine(setup)


@pytest.fixture
def echo_spec() -> Iterator[JobSpec]:
    register_engine_kind(EchoKind)
    spec = build_spec(
        {"inputs": {"paths": ["p.txt"]}, "workers": {"count": 3, "profile": "cpu"}}, "test spec"
    )
    # engine.kind is checked against the shipped kinds when a spec is read; a kind
    # registered at run time is set on the validated spec
    spec.engine = spec.engine.model_copy(update={"kind": "echo"})
    yield spec
    unregister_engine_kind("echo")


def test_the_spec_takes_exactly_the_shipped_kinds() -> None:
    assert list(get_args(EngineSpec.model_fields["kind"].annotation)) == engine_kind_names()


def test_an_unknown_kind_lists_the_registered_ones() -> None:
    with pytest.raises(SpecError, match="'tgi' is not known; choose one of: vllm, openai"):
        engine_kind("tgi")


def test_the_generic_job_path_plans_sets_up_and_starts_a_registered_kind(
    echo_spec: JobSpec,
) -> None:
    profile = resolve_profile("cpu")
    placement = job_placement(echo_spec, profile, None)
    assert len(placement.placements) == 3
    assert all(not p.group.devices and not p.env for p in placement.placements)  # unbound
    assert engine_vars_for(echo_spec, profile, 3) == {ENGINE_KIND_ENV: "echo", "ECHO_MODEL": "-"}
    # not a dispatcher: its batch is the engine's, not the endpoints'
    assert max_inflight(echo_spec, endpoints=5) == max_inflight(
        echo_spec.model_copy(update={"engine": EngineSpec()}), endpoints=5
    )
    setup = engine_setup(echo_spec, profile, "/m", "m", 3)
    engine = start_engine(setup)
    assert isinstance(engine, EchoEngine) and engine.model_name == "m"
