"""One job over several ranks with the real MPICH mpiexec (and ssh) and the real CPU vLLM."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.testing.stub_server import StubServer
from tests.conftest import (
    hpcinfer_cmd,
    read_rows,
    require,
    run_cli,
    start_cli,
    wait_for_units,
    write_prompts,
)
from tests.harness import exited, free_port, wait_for
from tests.processes import assert_no_orphans, workers_of

pytestmark = pytest.mark.integration

COMMON = ["--max-tokens", "16", "--ignore-eos", "--unit-size", "4", "--json"]
MPI = ["--launcher", "mpi"]
STATIC = ["--schedule", "static", "--export", "text", "--export", "jsonl"]


def _mpiexec() -> str:
    found = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    present = Path(found).exists() and importlib.util.find_spec("mpi4py") is not None
    require("MPI (mpiexec + mpi4py)", present, "pip install mpi4py mpich")
    return found


def _mpirun(ranks: int, args: list[str], cwd: Path, env: dict[str, str]) -> Any:
    """`mpiexec -n RANKS hpcinfer ARGS`, started by the user (each rank joins the job)."""
    done = subprocess.run(
        [_mpiexec(), "-n", str(ranks), *hpcinfer_cmd(*args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _summary(stdout: str) -> dict:
    return json.loads(stdout)


def _assert_exactly_once(out: Path, count: int, name: str = "prompts.txt") -> list[dict]:
    rows = read_rows(out / "results.jsonl")
    ids = [r["id"] for r in rows]
    assert ids == [f"{name}:{i}" for i in range(1, count + 1)]
    assert all(r["status"] == "ok" for r in rows)
    assert sum(len(read_rows(p)) for p in (out / "units").glob("*.jsonl")) == count
    return rows


def test_user_mpiexec_three_ranks_share_one_job(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Three ranks with the real engine join one job: each record exactly once, every rank
    reported. How the work spreads depends on which engine loads first (a short job is
    rightly finished by the first one up), so balance is checked against the stub below."""
    write_prompts(tmp_path / "prompts.txt", 240)
    done = _mpirun(3, ["run", "prompts.txt", "-o", "out", *MPI, *COMMON], tmp_path, cli_env)
    summary = _summary(done.stdout)  # only rank 0 prints
    _assert_exactly_once(tmp_path / "out", 240)
    per_rank = {w["rank"]: w["records"] for w in summary["workers"]}
    assert sorted(per_rank) == [0, 1, 2]
    assert sum(per_rank.values()) == 240
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert {w["rank"] for w in run_json["summary"]["workers"]} == {0, 1, 2}
    assert not (tmp_path / "out" / ".coordinator.json").exists()


def test_user_mpiexec_ranks_balance_work_dynamically(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Work goes to ranks as they ask for it, not split up front: against a stub server with
    a known pace (one rank alone would need about 12 s), every rank does a share. The server
    holds every request until all three ranks are at work, so how far apart the ranks start
    on a loaded machine does not decide the shares."""
    write_prompts(tmp_path / "prompts.txt", 240)
    with StubServer(ttft_s=0.05, itl_s=0.01, held=True) as stub:
        args = [
            "run", "prompts.txt", "-o", "out", *MPI, *COMMON, "--engine", "openai",
            "--url", stub.url, "--set", "client.inflight_per_endpoint=4",
        ]  # fmt: skip
        stdout = _three_ranks_at_work(stub, args, tmp_path, cli_env)
        assert stub.stats()["ok"] == 240
    summary = _summary(stdout)
    _assert_exactly_once(tmp_path / "out", 240)
    per_rank = {w["rank"]: w["records"] for w in summary["workers"]}
    print("records per rank:", per_rank)
    assert sorted(per_rank) == [0, 1, 2]
    assert sum(per_rank.values()) == 240
    assert all(n >= 20 for n in per_rank.values()), per_rank


def _rank_pid(launcher_pid: int, rank: int, timeout: float = 60) -> int:
    """The pid of MPI rank `rank` (an hpcinfer process with PMI_RANK=rank) under the launcher."""

    def find() -> int:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            is_rank = b"hpcinfer" in cmdline and b"hpcinfer.run.worker" not in cmdline
            if is_rank and f"PMI_RANK={rank}".encode() in environ:
                return int(proc.name)
        return 0

    return wait_for(find, timeout, f"rank {rank} of launcher {launcher_pid}", interval=0.2)


def test_kill_one_rank_then_rerun_completes_exactly_once(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    _mpiexec()
    write_prompts(tmp_path / "prompts.txt", 160)
    env = dict(cli_env, PATH=f"{Path(sys.executable).parent}:{cli_env['PATH']}")
    args = ["run", "prompts.txt", "-o", "out", "--launcher", "mpi", "--workers", "3", *COMMON]
    # hpcinfer starts the ranks itself (mpiexec -n 3 -ppn 3 ...).
    proc = start_cli(hpcinfer_cmd(*args), tmp_path, env)
    units = tmp_path / "out" / "units"
    wait_for_units(tmp_path / "out", 3, proc)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    committed_before = len(list(units.glob("*.jsonl")))
    if proc.returncode == 0:
        pytest.fail("the job cannot have finished cleanly with a rank killed mid-run:\n" + stderr)

    rerun = run_cli(args, tmp_path, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_exactly_once(tmp_path / "out", 160)
    summary = _summary(rerun.stdout)
    assert summary["resumed"] is True
    # Committed work of every rank was kept: the rerun did exactly the rest.
    assert summary["records_this_run"] == 160 - 4 * committed_before


def test_a_rank_whose_worker_dies_loses_nothing_the_others_finish(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The common crash (a worker killed, e.g. its engine out of memory) leaves the MPI job
    up: rank 0 hands the dead worker's uncommitted units to the other ranks and the job
    completes, every record exactly once. The server holds every request until all three
    ranks' dispatchers are at work (4 requests each in flight), so rank 1 is mid-unit when
    its worker dies whatever order the ranks start in and however loaded the machine is."""
    write_prompts(tmp_path / "prompts.txt", 240)
    units = tmp_path / "out" / "units"
    with StubServer(held=True) as stub:
        args = [
            "run", "prompts.txt", "-o", "out", *MPI, *COMMON, "--engine", "openai",
            "--url", stub.url, "--set", "client.inflight_per_endpoint=4",
        ]  # fmt: skip

        def kill_rank_1s_worker(launcher: int) -> None:
            assert not list(units.glob("*.jsonl")), "nothing can commit while the server holds"
            (worker,) = workers_of(_rank_pid(launcher, 1))
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: worker not in workers_of(_rank_pid(launcher, 1)), 30, "the kill")

        stdout = _three_ranks_at_work(stub, args, tmp_path, cli_env, kill_rank_1s_worker)
    _assert_exactly_once(tmp_path / "out", 240)
    summary = _summary(stdout)
    assert sorted(w["rank"] for w in summary["workers"]) == [0, 1, 2]
    lost = [w for w in summary["workers"] if w["rank"] == 1]
    assert lost and "lost" in (lost[0]["error"] or ""), summary["workers"]
    assert "redid its units" in summary["message"]
    assert not list(units.glob(".*tmp")), "no temp file of a cut commit is left"


def _three_ranks_at_work(
    stub: StubServer,
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    meanwhile: Callable[[int], None] = lambda launcher: None,
) -> str:
    """`mpiexec -n 3 hpcinfer ARGS` against a held stub (4 requests in flight per rank):
    once all three ranks hold requests, `meanwhile(launcher pid)`, then the stub answers.
    The job's stdout; it must succeed."""
    proc = start_cli([_mpiexec(), "-n", "3", *hpcinfer_cmd(*args)], cwd, env)
    try:
        _wait_all_ranks_at_work(stub, proc)
        meanwhile(proc.pid)
        stub.release()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def test_static_schedule_reproduces_simple_test(tmp_path: Path, cli_env: dict[str, str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for rank in range(3):
        write_prompts(inputs / f"{rank}.in", 6 + rank)
    _mpirun(3, ["run", "in", "-o", "out", *MPI, *STATIC, *COMMON], tmp_path, cli_env)
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    for rank in range(3):
        mine = [r for r in rows if r["id"].startswith(f"in/{rank}.in:")]
        assert len(mine) == 6 + rank
        assert {r["worker"] for r in mine} == {rank}, "file i must run on rank i"
        out_file = tmp_path / "out" / "text" / "in" / f"{rank}.out"  # {rank}.in -> {rank}.out
        assert out_file.read_text().count("Prompt:") == 6 + rank


def test_ssh_launcher_two_hosts(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`--launcher ssh` over a hostfile; a stand-in ssh runs the quoted remote command with
    sh here, so the quoting and the rendezvous are the real ones."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\n# ssh -o BatchMode=yes HOST COMMAND\nexec sh -c "$4"\n')
    fake_ssh.chmod(0o755)
    (tmp_path / "hosts").write_text("localhost\n127.0.0.1\n")
    write_prompts(tmp_path / "prompts.txt", 40)
    env = dict(cli_env, HPCINFER_SSH=str(fake_ssh))
    ssh_args = ["--hostfile", "hosts", "--workers", "1", *COMMON]
    done = run_cli(
        ["run", "prompts.txt", "-o", "out dir; $(touch PWNED)", "--launcher", "ssh", *ssh_args],
        tmp_path,
        env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "PWNED").exists()
    _assert_exactly_once(tmp_path / "out dir; $(touch PWNED)", 40)
    summary = _summary(done.stdout)
    assert sorted(w["rank"] for w in summary["workers"]) == [0, 1]


def test_node_local_buffer_moves_every_unit_to_the_shared_store(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_prompts(tmp_path / "prompts.txt", 24)
    local = tmp_path / "node-local"
    buffered = ["--local-dir", str(local), *MPI, *COMMON]
    _mpirun(2, ["run", "prompts.txt", "-o", "out", *buffered], tmp_path, cli_env)
    _assert_exactly_once(tmp_path / "out", 24)
    leftovers = [p for p in local.rglob("*") if p.is_file()]
    assert leftovers == [], "every committed unit moved to the shared store"




def _wait_all_ranks_at_work(stub: StubServer, proc: subprocess.Popen[str]) -> None:
    wait_for(
        lambda: stub.stats()["running"] == 12,
        300,
        "all three ranks at work (12 requests held, 4 per rank)",
        state=lambda: stub.stats()["running"],
        give_up=lambda: exited(proc),
    )


def _start_three_ranks(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`mpiexec -n 3 hpcinfer ARGS` in its own session, stderr to cwd/stderr.log."""
    with (cwd / "stderr.log").open("w") as stderr:
        return subprocess.Popen(
            [_mpiexec(), "-n", "3", *hpcinfer_cmd(*args)], cwd=cwd, env=env,
            stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True,
        )  # fmt: skip


def _ctrl_c_twice(proc: subprocess.Popen[str], log: Path) -> int:
    """Ctrl-C rank 0 (its stop message first), then again if the job still runs; the job's
    exit code, which must come well before anything in it would end by itself."""
    try:
        rank_0 = _rank_pid(proc.pid, 0)
        os.kill(rank_0, signal.SIGINT)
        wait_for(
            lambda: "Ctrl-C again to abort" in log.read_text(),
            30,
            "the stop message",
            state=lambda: log.read_text()[-2000:],
            give_up=lambda: exited(proc),
        )
        if proc.poll() is None:
            os.kill(rank_0, signal.SIGINT)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_during_start_up_ends_every_ranks_workers(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A three-rank job whose workers are all still starting (their engine waits 600 s for a
    server that never answers, as a vLLM engine loads a model): Ctrl-C ends them all, other
    ranks' included (they hold nothing yet), at once."""
    write_prompts(tmp_path / "prompts.txt", 40)
    mark = uuid.uuid4().hex
    args = [
        "run", "prompts.txt", "-o", "out", *MPI, "--engine", "openai",
        "--url", f"http://127.0.0.1:{free_port()}", "--set", "client.connect_timeout_s=600",
        "--set", "client.all_down_s=600",
    ]  # fmt: skip
    proc = _start_three_ranks(args, tmp_path, dict(cli_env, HPCINFER_TEST_MARK=mark))
    wait_for(
        lambda: len(_status_workers(tmp_path / "out")) == 3,
        300,
        "a worker of each of the three ranks joined, all loading",
        state=lambda: _status_workers(tmp_path / "out"),
        give_up=lambda: exited(proc),
    )
    code = _ctrl_c_twice(proc, tmp_path / "stderr.log")
    assert code == 4, (tmp_path / "stderr.log").read_text()[-3000:]
    assert_no_orphans(mark, timeout=10)


def test_a_second_ctrl_c_aborts_every_rank_at_once(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Every rank's workers hold requests the server never answers: the first Ctrl-C drains
    (which cannot finish), the second aborts them all, other ranks' included, at once."""
    write_prompts(tmp_path / "prompts.txt", 240)
    mark = uuid.uuid4().hex
    with StubServer(held=True) as stub:
        args = [
            "run", "prompts.txt", "-o", "out", *MPI, "--max-tokens", "16", "--unit-size", "4",
            "--engine", "openai", "--url", stub.url, "--set", "client.inflight_per_endpoint=4",
        ]  # fmt: skip
        proc = _start_three_ranks(args, tmp_path, dict(cli_env, HPCINFER_TEST_MARK=mark))
        _wait_all_ranks_at_work(stub, proc)
        code = _ctrl_c_twice(proc, tmp_path / "stderr.log")
    log = (tmp_path / "stderr.log").read_text()
    assert code == 4, log[-3000:]
    assert "aborting: ending the workers now" in log
    assert_no_orphans(mark, timeout=10)
    assert not list((tmp_path / "out" / "units").glob("*.jsonl"))  # nothing was answered

def _status_workers(out: Path) -> list[dict[str, Any]]:
    """The workers the running job's status.json lists (none before it is written)."""
    try:
        return list(json.loads((out / "status.json").read_text())["workers"])
    except (OSError, ValueError, KeyError):
        return []
