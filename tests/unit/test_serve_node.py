"""`hpcinfer serve` on one node, with stand-in servers: the loop's exits (signal, deadline,
nothing left to serve), rank 0's merge of the parts, and the CLI's refusals."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.cli.serve_cmds import build_serve_spec
from hpcinfer.cluster.allocation import Allocation
from hpcinfer.core.endpoints_registry import (
    Endpoint,
    part_path,
    parts_dir,
    read_registry,
    write_registry,
)
from hpcinfer.core.stop import signals_feed
from hpcinfer.errors import SpecError
from hpcinfer.launch.rank_commands import launch_commands
from hpcinfer.serve import node
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import Fleet, ServerLaunch
from hpcinfer.serve.launch import one_rank_per_node
from hpcinfer.serve.node import ServeOptions, ServingDocument, serve_node
from hpcinfer.serve.parts import PartsMerger
from hpcinfer.spec import JobSpec
from tests.harness import wait_for
from tests.unit.serve_fakes import fake_launch, outside_any_rank
from tests.unit.test_serve_endpoints import run_main


def use_fakes(monkeypatch: pytest.MonkeyPatch, launches: list[ServerLaunch]) -> None:
    """serve_node plans these launches instead of vLLM servers."""

    def plan(spec: JobSpec, cwd: Path, registry: Path, rank: Any = None, **kw: Any) -> Fleet:
        return Fleet(launches, kw["write_to"], on_event=kw["on_event"], monitor_interval_s=0.2)

    monkeypatch.setattr(node, "plan_fleet", plan)


def spec(tmp_path: Path, **fields: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"serve": {"registry": str(tmp_path / "endpoints.json")}, **fields}
    )


def later(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def states(registry: Path) -> list[str]:
    try:
        return [e.state for e in read_registry(registry)]
    except Exception:
        return []


def test_sigterm_through_the_cli_feed_stops_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    launches = [fake_launch(tmp_path, i, env=dict(os.environ))[0] for i in range(2)]
    use_fakes(monkeypatch, launches)
    registry = tmp_path / "endpoints.json"
    announced: list[ServingDocument] = []

    def terminate_when_announced() -> None:
        wait_for(lambda: states(registry) == ["ready", "ready"], 20, "both servers ready")
        wait_for(lambda: announced, 20, "the fleet announced")
        os.kill(os.getpid(), signal.SIGTERM)

    timer = later(0, terminate_when_announced)
    options = ServeOptions(cwd=tmp_path, on_ready=announced.append)
    with signals_feed(options.stop):
        outcome = serve_node(spec(tmp_path), options)
    timer.join()
    assert outcome.reason == "signal SIGTERM"
    assert [e.state for e in outcome.endpoints] == ["stopped", "stopped"]
    assert [e.state for e in read_registry(registry)] == ["stopped", "stopped"]
    assert [e["state"] for e in announced[0].endpoints] == ["ready", "ready"]
    out, err = capsys.readouterr()
    assert out == ""  # the library prints nothing on stdout; `--json` is the CLI's
    assert "serving; Ctrl-C or SIGTERM stops the servers" in err
    assert "signal SIGTERM: stopping the servers" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_serve_node_runs_in_a_worker_thread_and_stops_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fakes(monkeypatch, [fake_launch(tmp_path, 0, env=dict(os.environ))[0]])
    options = ServeOptions(cwd=tmp_path, on_ready=lambda _doc: options.stop.drain("done"))
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            outcomes.append(serve_node(spec(tmp_path), options))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and not errors
    assert outcomes[0].reason == "done"
    assert [e.state for e in read_registry(tmp_path / "endpoints.json")] == ["stopped"]


def test_the_time_limit_stops_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    use_fakes(monkeypatch, [fake_launch(tmp_path, 0, env=dict(os.environ))[0]])
    started = time.monotonic()
    outcome = serve_node(spec(tmp_path, time_limit="3s"), ServeOptions(cwd=tmp_path))
    assert outcome.reason == "time limit reached" and time.monotonic() - started < 120
    assert [e.state for e in read_registry(tmp_path / "endpoints.json")] == ["stopped"]
    assert "time limit reached" in capsys.readouterr().err


def test_no_server_ready_exits_1_with_log_tails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    crash = ["sh", "-c", "echo 'RuntimeError: Engine core initialization failed' >&2; exit 1"]
    use_fakes(monkeypatch, [fake_launch(tmp_path, i, argv=crash)[0] for i in range(2)])
    with pytest.raises(ServeError, match="no server became ready") as info:
        serve_node(spec(tmp_path), ServeOptions(cwd=tmp_path))
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.count("Engine core initialization failed") == 2  # each server's tail
    assert [e.state for e in read_registry(tmp_path / "endpoints.json")] == ["failed"] * 2


def test_every_server_dead_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    launch, _ = fake_launch(tmp_path, 0, env=dict(os.environ))
    use_fakes(monkeypatch, [launch])
    registry = tmp_path / "endpoints.json"

    def kill_when_ready() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                entries = read_registry(registry)
                if entries[0].state == "ready":
                    os.kill(entries[0].pid or 0, signal.SIGKILL)
                    return
            except Exception:
                pass
            time.sleep(0.1)

    timer = later(0, kill_when_ready)
    with pytest.raises(ServeError, match="every server has stopped working"):
        serve_node(spec(tmp_path), ServeOptions(cwd=tmp_path))
    timer.join()
    assert [e.state for e in read_registry(registry)] == ["dead"]
    assert "killed by SIGKILL" in capsys.readouterr().err


def test_rank_0_merges_parts_and_cleans_up_after_earlier_launches(tmp_path: Path) -> None:
    registry = tmp_path / "endpoints.json"
    stale = part_path(registry, "oldnode", 5)
    write_registry(stale, [Endpoint(url="http://old:1", model="m", rank=5)])
    os.utime(stale, (time.time() - 100, time.time() - 100))
    merger = PartsMerger(registry, world_size=2)
    merger.remove_stale(time.time() - 1)
    assert not stale.exists()
    write_registry(part_path(registry, "b", 1), [Endpoint(url="http://b:1", model="m", rank=1)])
    write_registry(part_path(registry, "a", 0), [Endpoint(url="http://a:1", model="m", rank=0)])
    merged = merger.merge_if_changed()
    assert merged is not None and [e.url for e in merged] == ["http://a:1", "http://b:1"]
    assert merger.merge_if_changed() is None  # nothing changed
    assert [e.rank for e in read_registry(registry)] == [0, 1]
    assert not merger.ranks_settled()  # both still 'starting'
    for name, rank in (("a", 0), ("b", 1)):
        entry = Endpoint(url=f"http://{name}:1", model="m", rank=rank, state="stopped")
        write_registry(part_path(registry, name, rank), [entry])
    assert merger.ranks_settled()
    final = merger.finish(wait_s=1)
    assert [e.state for e in final] == ["stopped", "stopped"]
    assert not parts_dir(registry).exists()


def test_a_part_removed_by_mistake_is_written_again(tmp_path: Path) -> None:
    launch, _ = fake_launch(tmp_path, 0)
    part = part_path(tmp_path / "endpoints.json", "n", 1)
    fleet = Fleet([launch], part)
    fleet.write()
    part.unlink()
    fleet.rewrite_if_missing()
    assert part.exists()


# --- the CLI ------------------------------------------------------------------------------


def test_flags_and_set_build_the_serve_spec(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "serve:\n  port: 9000\n  servers: 3\nengine:\n  dtype: float16\n"
    )
    built = build_serve_spec(
        "job.yaml",
        {
            "serve.servers": 2,
            "serve.host": "0.0.0.0",
            "serve.api_key_env": "K",
            "serve.ready_timeout_s": 60.0,
            "engine.tensor_parallel_size": None,
        },
        ["serve.args=[--swap-space, '4']"],
        tmp_path,
    )
    assert (built.serve.port, built.serve.servers, built.serve.host) == (9000, 2, "0.0.0.0")
    assert built.serve.api_key_env == "K" and built.serve.ready_timeout_s == 60.0
    assert built.engine.dtype == "float16"
    assert built.serve.args == ["--swap-space", "4"]
    with pytest.raises(SpecError, match="takes a spec file"):
        build_serve_spec("prompts.txt", {}, [], tmp_path)
    with pytest.raises(SpecError, match=r"serve\.port"):
        build_serve_spec(None, {"serve.port": 70000}, [], tmp_path)


def test_cli_refuses_an_unset_key_variable_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code, out = run_main(["serve", "--api-key-env", "NO_SUCH_KEY_VAR"], monkeypatch, capsys)
    assert code == 2 and "$NO_SUCH_KEY_VAR is not set" in out
    # Nothing started: the registry only lists the failure, for `endpoints --wait` to end on.
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == "failed" and entry.pid is None
    assert "$NO_SUCH_KEY_VAR is not set" in (entry.error or "")


def test_cli_refuses_loopback_across_hosts_before_launching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    outside_any_rank(tmp_path, monkeypatch)
    (tmp_path / "hosts").write_text("node1\nnode2\n")
    code, out = run_main(["serve", "--launcher", "ssh", "--hostfile", "hosts"], monkeypatch, capsys)
    assert code == 2
    assert "--host 0.0.0.0" in out and "--api-key-env" in out


def test_self_launch_starts_one_serve_rank_per_node() -> None:
    spec = JobSpec.model_validate({"workers": {"count": 4}, "serve": {"host": "0.0.0.0"}})
    hosts = ("n1", "n2", "n3")
    allocation = Allocation(hosts=hosts, slots=dict.fromkeys(hosts, 4), source="pbs", job_id="1")
    command = ["python", "-m", "hpcinfer", "serve", "--launcher", "mpi"]
    (mpi,) = launch_commands(
        one_rank_per_node(spec), "mpi", command, allocation, {}, runner=lambda argv: "HYDRA"
    )
    assert mpi[1:5] == ["-n", "3", "-ppn", "1"]
    assert mpi[-len(command) :] == command
    (srun,) = launch_commands(
        one_rank_per_node(spec), "srun", command, allocation, {"SLURM_JOB_ID": "7"}
    )
    assert srun[srun.index("--ntasks-per-node") + 1] == "1"
    assert spec.workers.count == 4  # the user's spec is left alone
