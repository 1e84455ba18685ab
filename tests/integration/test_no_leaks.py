"""Nothing hpcinfer starts outlives it, at TP=2, whichever way it ends.

A TP=2 vLLM engine is a tree: hpcinfer's worker or server, vLLM's `VLLM::EngineCore` and
its `VLLM::Worker_TP0`/`Worker_TP1` (7 GiB each with the default KV cache, or the GPUs).
Each test runs one command in its own temporary directory and judges by the process table:
every process whose working directory is that directory is ours (children inherit it; vLLM's
renamed processes keep it), and none may be left once the command has ended. For a normal
end, an error and SIGTERM, the table must be empty the moment hpcinfer has exited; after a
SIGKILL of hpcinfer (no clean-up code of ours runs), within a bounded wait for the guards.

Paths: `run` ends normally, fails (weights that fail to load once the TP workers run), is
stopped by SIGTERM and killed by SIGKILL; a one-shot fleet (`run --engine vllm-server`) ends
normally and is killed; `serve` is stopped by SIGTERM and killed; `bench offline` ends
normally and is killed. One TP=2 engine start each, one at a time (two would not fit in
memory on a small machine), a small KV cache and a few tokens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcinfer.core.endpoints_registry import RegistryError, read_registry
from tests.conftest import hpcinfer_cmd, read_rows, require, start_cli
from tests.harness import exited, free_port, wait_for
from tests.processes import command_lines, processes_in, titled

pytestmark = pytest.mark.integration

# TP=2 with a small KV cache: the engine starts without zeroing gigabytes; a few tokens.
TP2 = ["--tp", "2", "--kv-cache-bytes", str(256 << 20)]
RUN = ["run", "p.txt", *TP2, "--max-tokens", "4", "-o", "out"]
BENCH = ["bench", "offline", *TP2, "--input-len", "8", "--output-len", "4", "--batch-size", "2",
         "--iters", "1", "--out", "out"]  # fmt: skip
PROMPTS = ["the model reads a prompt", "and predicts the next token", "one step at a time"]
START_S = 400.0  # a loaded 2-core CI machine can take minutes per engine start
KILLED_S = 60.0  # the guard gives a group 5 s on SIGTERM, then SIGKILL


Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def place(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Path]:
    """The test's directory, with the prompts in p.txt; at the end whatever still runs
    there is killed, so that one leak does not starve the tests after it."""
    require("two CPU cores", len(os.sched_getaffinity(0)) >= 2, "run TP=2 on 2+ cores")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    yield tmp_path
    for pid in processes_in(tmp_path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != os.getpgid(0):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start(place: Path, cli_env: dict[str, str]) -> Start:
    """`start("run", ...)`: hpcinfer in the test's directory, in its own session."""

    def starter(*args: str) -> subprocess.Popen[str]:
        return start_cli(hpcinfer_cmd(*args), place, cli_env)

    return starter


def ended(proc: subprocess.Popen[str], timeout: float = START_S) -> tuple[str, str]:
    """hpcinfer's stdout and stderr once it has exited by itself."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"hpcinfer did not end within {timeout:g}s: {err[-3000:]}")


def nothing_left(place: Path) -> None:
    """hpcinfer has exited: not one process it started (or they started) is still there."""
    left = processes_in(place)
    assert left == [], f"left running after hpcinfer exited: {command_lines(left)}"


def tp_workers_running(place: Path, proc: subprocess.Popen[str]) -> None:
    """Wait until vLLM's two TP workers of the command started in `place` are running."""
    wait_for(
        lambda: len(titled(processes_in(place), "VLLM::Worker_TP")) >= 2,
        START_S,
        "vLLM's Worker_TP0 and Worker_TP1",
        state=lambda: command_lines(processes_in(place)),
        give_up=lambda: exited(proc),
        interval=0.2,
    )


def killed_leaves_nothing(place: Path, proc: subprocess.Popen[str]) -> None:
    """kill -9 hpcinfer alone (no clean-up of ours runs): its engines end all the same."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    wait_for(
        lambda: not processes_in(place),
        KILLED_S,
        "every process of the killed hpcinfer to end",
        state=lambda: command_lines(processes_in(place)),
        interval=0.2,
    )


@pytest.fixture(scope="module")
def broken_model(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights cut short: the config and tokenizer load, so vLLM
    starts its EngineCore and both TP workers, which then fail reading the weights."""
    build = "from hpcinfer.core.tiny_model import ensure_tiny_model; print(ensure_tiny_model())"
    built = subprocess.run(
        [sys.executable, "-c", build], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    broken = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(built.stdout.strip(), broken, ignore=shutil.ignore_patterns("HPCINFER_*"))
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # the header stays whole, the data not
    return broken


# -- hpcinfer run ------------------------------------------------------------------------------


def test_run_that_ends_normally_leaves_nothing(place: Path, start: Start) -> None:
    proc = start(*RUN)
    _, err = ended(proc)
    assert proc.returncode == 0, err[-3000:]
    nothing_left(place)
    assert len(read_rows(place / "out" / "results.jsonl")) == len(PROMPTS)


def test_run_whose_tp_workers_fail_to_load_the_weights_leaves_nothing(
    place: Path, start: Start, broken_model: Path
) -> None:
    proc = start(*RUN, "--model", str(broken_model))
    _, err = ended(proc)
    assert proc.returncode == 1 and "the run failed" in err, err[-3000:]
    nothing_left(place)
    log = (place / "out" / "logs" / "worker-0.log").read_text(encoding="utf-8")
    for rank in ("Worker_TP0", "Worker_TP1"):  # both TP workers ran, and failed on the weights
        assert f"({rank} pid=" in log and "SafetensorError" in log, log[-3000:]


def test_run_stopped_by_sigterm_leaves_nothing(place: Path, start: Start) -> None:
    proc = start(*RUN)
    tp_workers_running(place, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = ended(proc)
    # drained: the unit in flight finished (0) or is kept for a rerun (4, incomplete)
    assert proc.returncode in (0, 4), err[-3000:]
    nothing_left(place)


def test_run_killed_by_sigkill_leaves_nothing(place: Path, start: Start) -> None:
    proc = start(*RUN)
    tp_workers_running(place, proc)
    killed_leaves_nothing(place, proc)


# -- a one-shot fleet: run --engine vllm-server ------------------------------------------------


def _fleet(start: Start) -> subprocess.Popen[str]:
    return start(*RUN, "--engine", "vllm-server", "--servers", "1",
                 "--set", f"serve.port={free_port()}")  # fmt: skip


def test_one_shot_fleet_that_ends_normally_leaves_nothing(place: Path, start: Start) -> None:
    proc = _fleet(start)
    _, err = ended(proc)
    assert proc.returncode == 0, err[-3000:]
    nothing_left(place)
    assert len(read_rows(place / "out" / "results.jsonl")) == len(PROMPTS)
    assert [e.state for e in read_registry(place / "out" / "endpoints.json")] == ["stopped"]


def test_one_shot_fleet_killed_by_sigkill_leaves_nothing(place: Path, start: Start) -> None:
    proc = _fleet(start)
    tp_workers_running(place, proc)
    killed_leaves_nothing(place, proc)


# -- hpcinfer serve ----------------------------------------------------------------------------


def _serve(start: Start) -> subprocess.Popen[str]:
    return start("serve", *TP2, "--servers", "1", "--endpoints", "endpoints.json",
                 "--port", str(free_port()))  # fmt: skip


def states(registry: Path) -> list[str]:
    """The servers' states in the registry (none while serve has not written it yet)."""
    with contextlib.suppress(RegistryError):
        return [e.state for e in read_registry(registry)]
    return []


def test_serve_stopped_by_sigterm_leaves_nothing(place: Path, start: Start) -> None:
    proc = _serve(start)
    registry = place / "endpoints.json"
    wait_for(
        lambda: states(registry) == ["ready"],
        START_S,
        "the TP=2 server to be ready",
        state=lambda: command_lines(processes_in(place)),
        give_up=lambda: exited(proc),
        interval=0.2,
    )
    assert len(titled(processes_in(place), "VLLM::Worker_TP")) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = ended(proc, 120)
    assert proc.returncode == 0, err[-3000:]
    nothing_left(place)
    assert states(registry) == ["stopped"]


def test_serve_killed_by_sigkill_leaves_nothing(place: Path, start: Start) -> None:
    proc = _serve(start)
    tp_workers_running(place, proc)
    killed_leaves_nothing(place, proc)


# -- hpcinfer bench offline --------------------------------------------------------------------


def test_bench_offline_that_ends_normally_leaves_nothing(place: Path, start: Start) -> None:
    proc = start(*BENCH)
    _, err = ended(proc)
    assert proc.returncode == 0, err[-3000:]
    nothing_left(place)
    assert (place / "out" / "offline.json").is_file()


def test_bench_offline_killed_by_sigkill_leaves_nothing(place: Path, start: Start) -> None:
    proc = start(*BENCH)
    tp_workers_running(place, proc)
    killed_leaves_nothing(place, proc)
