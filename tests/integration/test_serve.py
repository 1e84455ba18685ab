"""`hpcinfer serve` with real vLLM servers (CPU build) on 127.0.0.1, and `hpcinfer endpoints`.

Each server start costs about 30 s of CPU here, so there are few tests, each doing a lot.
Every test marks its processes with a unique environment variable (servers inherit it, and
vLLM's EngineCore children theirs), so a finalizer can find and kill anything left behind
and the tests can prove that nothing was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.core.endpoints_registry import read_registry
from hpcinfer.serve.ports import port_in_use
from tests.conftest import check_startup_phases, hpcinfer_cmd, require, run_cli, start_cli
from tests.processes import assert_no_orphans, marked_env

pytestmark = pytest.mark.integration

TWO_CORES = "name: two-cores\nvendor: cpu\ngpus_per_node: 0\ncores_per_node: 2\n"
READY_WAIT_S = "480"  # a loaded 2-core CI machine can take minutes per start


@pytest.fixture
def env(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """cli_env plus a mark; at the end every marked process is killed (on failure too)."""
    with marked_env(cli_env) as marked_cli_env:
        yield marked_cli_env


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """start_cli, with the process group killed at the end whatever happened."""
    procs: list[subprocess.Popen[str]] = []

    def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        proc = start_cli(argv, cwd, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def free_base_port(count: int) -> int:
    """A port p with p .. p+count-1 free now."""
    for base in range(21000 + os.getpid() % 1000 * 8, 60000, 16):
        if not any(port_in_use("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError("no free ports")


def complete(url: str, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "prompt": "hello there", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", body, {"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=120) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def stop(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_a_broken_model_fails_fast_with_the_log_tail(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no_such_arch", "architectures": ["Nope"]}')
    port = free_base_port(1)
    args = ["serve", "--model", str(bad), "--servers", "1", "--port", str(port)]
    args += ["--ready-timeout", "1h"]
    began = time.monotonic()
    done = run_cli(args, tmp_path, env, timeout=900)
    took = time.monotonic() - began
    print(f"broken model reported after {took:.1f}s")
    assert done.returncode == 1, done.stderr[-3000:]
    assert took < 600  # at the server's exit, not after the hour's --ready-timeout
    assert "no server became ready" in done.stderr
    assert "last log lines" in done.stderr and "no_such_arch" in done.stderr
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == "failed" and "exited with code" in (entry.error or "")
    assert_no_orphans(env["HPCINFER_TEST_MARK"], str(bad))


def _mpiexec() -> str:
    found = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    require("MPI (mpiexec)", Path(found).exists(), "pip install mpich")
    return found


def test_two_mpi_ranks_merge_one_registry_and_stop_on_sigterm(
    tmp_path: Path, env: dict[str, str], started: Callable[..., subprocess.Popen[str]]
) -> None:
    (tmp_path / "two.yaml").write_text(TWO_CORES)
    port = free_base_port(2)
    args = ["serve", "--launcher", "mpi", "--servers", "1", "--endpoints", "endpoints.json"]
    args += ["--port", str(port), "--profile", "two.yaml"]
    mpi = started([_mpiexec(), "-n", "2", *hpcinfer_cmd(*args)], tmp_path, env)

    waited = run_cli(
        ["endpoints", "--endpoints", "endpoints.json", "--wait", READY_WAIT_S, "--expect", "2"],
        tmp_path,
        env,
    )
    if mpi.poll() is not None:
        pytest.fail("mpiexec ended early:\n" + mpi.communicate()[1][-4000:])
    assert waited.returncode == 0, waited.stdout + waited.stderr[-3000:]
    entries = read_registry(tmp_path / "endpoints.json")
    assert [(e.rank, e.state) for e in entries] == [(0, "ready"), (1, "ready")]
    assert [e.url for e in entries] == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    assert [e.devices for e in entries] == [["core0"], ["core1"]]
    for entry in entries:
        check_startup_phases(entry.startup, server=True)

    code, _, err = stop(mpi)
    assert code == 0, err[-3000:]
    entries = read_registry(tmp_path / "endpoints.json")
    assert [e.state for e in entries] == ["stopped", "stopped"]
    assert not (tmp_path / "endpoints.json.parts").exists()
    assert_no_orphans(env["HPCINFER_TEST_MARK"], f"--port {port}", f"--port {port + 1}")
