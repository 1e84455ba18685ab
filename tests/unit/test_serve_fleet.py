"""A fleet of stand-in servers: readiness (never a hang), health states, registry, shutdown."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcinfer.core.endpoints_registry import read_registry
from hpcinfer.errors import SpecError
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import Fleet, FleetEvent, ServerLaunch
from hpcinfer.serve.report import event_line, startup_note
from tests.harness import wait_for
from tests.unit.serve_fakes import fake_launch


def states(registry: Path) -> list[str]:
    return [e.state for e in read_registry(registry)]


@pytest.fixture
def fleets() -> Iterator[Callable[..., Fleet]]:
    """Make fleets; every one is stopped at the end, even when the test fails."""
    made: list[Fleet] = []

    def make(launches: list[ServerLaunch], registry: Path, **kwargs: object) -> Fleet:
        fleet = Fleet(launches, registry, **kwargs)  # type: ignore[arg-type]
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop(grace_s=2)


def test_a_server_that_exits_at_once_fails_within_seconds_with_its_log(
    tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    crash = ["sh", "-c", "echo 'ValueError: no such model type: nonsense' >&2; exit 3"]
    launch, _ = fake_launch(tmp_path, 0, argv=crash)
    events: list[FleetEvent] = []
    fleet = fleets(
        [launch], tmp_path / "endpoints.json", on_event=events.append, ready_timeout_s=600.0
    )
    started = time.monotonic()
    fleet.start()
    with pytest.raises(ServeError) as info:
        fleet.wait_ready()
    assert time.monotonic() - started < 120  # at the exit, not after the ready timeout
    message = str(info.value)
    assert "no server became ready" in message
    assert "exited with code 3 before it was ready" in message
    assert "no such model type: nonsense" in message  # the log's tail
    assert str(launch.log) in message
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == "failed" and "exited with code 3" in (entry.error or "")
    assert [e.endpoint.state for e in events] == ["starting", "failed"]
    assert "nonsense" in event_line(events[-1])


def test_the_ready_timeout_is_honoured(tmp_path: Path, fleets: Callable[..., Fleet]) -> None:
    launch, _ = fake_launch(tmp_path, 0, argv=["sleep", "600"])  # alive, never listens
    fleet = fleets([launch], tmp_path / "endpoints.json", ready_timeout_s=2.0)
    started = time.monotonic()
    fleet.start()
    with pytest.raises(ServeError, match=r"not ready after 2s.*--ready-timeout"):
        fleet.wait_ready()
    assert 1.9 <= time.monotonic() - started < 120  # the timeout, not the server's end
    assert states(tmp_path / "endpoints.json") == ["failed"]
    wait_for(
        lambda: not _alive(read_registry(tmp_path / "endpoints.json")),
        15,
        "no server alive in the registry",
        state=lambda: read_registry(tmp_path / "endpoints.json"),
    )


def _alive(entries: list) -> bool:
    """Whether any registry pid still runs (killed servers are reaped by the fleet)."""
    for entry in entries:
        try:
            os.kill(entry.pid, 0)
        except ProcessLookupError:
            continue
        return True
    return False


def test_monitor_follows_unhealthy_recovery_and_death(
    tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    launch, sick = fake_launch(tmp_path, 0, env=dict(os.environ))
    registry = tmp_path / "endpoints.json"
    events: list[FleetEvent] = []
    fleet = fleets([launch], registry, on_event=events.append, monitor_interval_s=0.2)
    fleet.start()
    (ready,) = fleet.wait_ready()
    assert ready.state == "ready" and ready.ready and ready.pid
    (entry,) = read_registry(registry)  # the start-up: its ready time; nothing vLLM logged
    assert entry.startup is not None and entry.startup["total_s"] > 0
    assert entry.startup["model_load_s"] is None and entry.startup["imports_s"] is None
    fleet.start_monitor()
    sick.touch()
    wait_for(
        lambda: states(registry) == ["unhealthy"],
        15,
        "the server unhealthy",
        state=lambda: states(registry),
    )
    assert "503" in (read_registry(registry)[0].error or "")
    sick.unlink()
    wait_for(
        lambda: states(registry) == ["ready"],
        15,
        "the server ready",
        state=lambda: states(registry),
    )
    os.kill(ready.pid, signal.SIGKILL)
    wait_for(
        lambda: states(registry) == ["dead"],
        15,
        "the server dead",
        state=lambda: states(registry),
    )
    assert "killed by SIGKILL" in (read_registry(registry)[0].error or "")
    assert fleet.all_down()
    fleet.stop()
    assert states(registry) == ["dead"]  # a dead server is not 'stopped'
    seen = [(e.previous, e.endpoint.state) for e in events]
    assert seen == [
        ("starting", "starting"),
        ("starting", "ready"),
        ("ready", "unhealthy"),
        ("unhealthy", "ready"),
        ("ready", "dead"),
    ]
    assert "healthy again" in event_line(events[3])


def test_context_manager_stops_every_server_and_marks_it_stopped(
    tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    launches = [fake_launch(tmp_path, i, env=dict(os.environ))[0] for i in range(2)]
    registry = tmp_path / "endpoints.json"
    with fleets(launches, registry) as fleet:
        fleet.start()
        ready = fleet.wait_ready()
        assert [e.url for e in ready] == [launch.url for launch in launches]
        document = json.loads(registry.read_text())
        assert [e["devices"] for e in document["endpoints"]] == [["core0"], ["core1"]]
        pids = [e.pid for e in ready]
    assert states(registry) == ["stopped", "stopped"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_some_ready_some_failed_and_first_ready_returns_early(
    tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    gate = tmp_path / "slow-may-listen"  # the slow server listens only once this exists
    slow_env = dict(os.environ, FAKE_GATE=str(gate))
    fast, _ = fake_launch(tmp_path, 0, env=dict(os.environ))
    slow, _ = fake_launch(tmp_path, 1, env=slow_env)
    broken, _ = fake_launch(tmp_path, 2, argv=["sh", "-c", "exit 1"])
    registry = tmp_path / "endpoints.json"
    fleet = fleets([fast, slow, broken], registry)
    fleet.start()
    first = fleet.wait_ready(return_when="first")
    assert [e.url for e in first] == [fast.url]
    gate.touch()
    everyone = fleet.wait_ready()
    assert [e.url for e in everyone] == [fast.url, slow.url]
    assert states(registry) == ["ready", "ready", "failed"]
    assert fleet.resolved() and not fleet.all_down()


def test_readiness_sends_the_api_key(tmp_path: Path, fleets: Callable[..., Fleet]) -> None:
    env = dict(os.environ, VLLM_API_KEY="k3y")
    good, _ = fake_launch(tmp_path, 0, env=env)
    bad, _ = fake_launch(tmp_path, 1, env=env)
    fleets([good], tmp_path / "good.json", api_key="k3y").start()
    wrong = fleets([bad], tmp_path / "bad.json", api_key="nope", ready_timeout_s=2.0)
    wrong.start()
    with pytest.raises(ServeError, match="401"):
        wrong.wait_ready()
    wait_for(
        lambda: states(tmp_path / "good.json") == ["ready"],
        15,
        "the good server ready",
        state=lambda: states(tmp_path / "good.json"),
    )
    assert "k3y" not in (tmp_path / "good.json").read_text()


def test_a_server_that_cannot_be_started_fails(
    tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    launch, _ = fake_launch(tmp_path, 0, argv=[str(tmp_path / "no-such-program")])
    fleet = fleets([launch], tmp_path / "endpoints.json")
    fleet.start()
    with pytest.raises(ServeError, match="cannot start"):
        fleet.wait_ready()


def test_wait_ready_before_start_is_a_programming_error(tmp_path: Path) -> None:
    launch, _ = fake_launch(tmp_path, 0)
    with pytest.raises(ServeError, match=r"before Fleet\.start"):
        Fleet([launch], tmp_path / "e.json").wait_ready()


def test_an_unwritable_registry_fails_before_any_server_starts(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    launch, _ = fake_launch(tmp_path, 0, argv=["sleep", "60"])
    fleet = Fleet([launch], blocker / "endpoints.json")
    with pytest.raises(SpecError, match="cannot write the endpoints registry"):
        fleet.start()
    assert fleet.endpoints[0].pid is None
    fleet.stop()


def test_the_ready_line_names_the_phases_vllm_reported() -> None:
    phases = {"model_load_s": 1.234, "kv_cache_s": 2.5, "compile_s": None, "total_s": 30.0}
    assert startup_note(phases) == " (model load 1.2 s, KV cache 2.5 s)"
    assert startup_note(None) == "" and startup_note({"total_s": 3.0}) == ""
