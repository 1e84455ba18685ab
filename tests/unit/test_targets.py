"""Where the dispatcher sends requests, and how many endpoints it plans to fill."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinfer.core.endpoints_registry import Endpoint, RegistryError, write_registry
from hpcinfer.engines.targets import resolve_targets
from hpcinfer.errors import SpecError
from hpcinfer.spec import build_spec


def _spec(**client: object) -> object:
    return build_spec({"engine": {"kind": "openai"}, "client": client})


def test_urls_and_ready_registry_entries_without_duplicates(tmp_path: Path) -> None:
    write_registry(
        tmp_path / "r.json",
        [
            Endpoint("http://a:1", "m", state="ready"),
            Endpoint("http://b:1", "m", state="starting"),
            Endpoint("http://c:1", "m", state="dead"),
        ],
    )
    spec = _spec(urls=["http://a:1/", "http://x:2"], registry="r.json")
    found = resolve_targets(spec, tmp_path)  # type: ignore[arg-type]
    assert [t.url for t in found.endpoints] == ["http://a:1", "http://x:2"]
    # b is still starting: the worker asks for enough work to fill it once it is up
    assert found.expected == 3


def test_no_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"--endpoints endpoints\.json"):
        resolve_targets(_spec(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="base URL"):
        resolve_targets(_spec(urls=["localhost:8000"]), tmp_path)  # type: ignore[arg-type]
    write_registry(tmp_path / "r.json", [Endpoint("http://a:1", "m", state="failed")])
    with pytest.raises(RegistryError, match="no ready server"):
        resolve_targets(_spec(registry="r.json"), tmp_path)  # type: ignore[arg-type]


def test_expected_endpoints_without_a_registry() -> None:
    spec = _spec(urls=["http://a:1"])
    assert resolve_targets(spec, Path(".")).expected == 1  # type: ignore[arg-type]
