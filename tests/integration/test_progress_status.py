"""Honest progress of a real run (tiny model, CPU vLLM): `hpcinfer status OUT_DIR` while the
job runs and after it; the first Ctrl-C says at once what it does, the second aborts, and
no process of the run is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.run.job_status import job_status
from tests.conftest import hpcinfer_cmd, run_cli, write_prompts
from tests.harness import wait_for
from tests.processes import assert_no_orphans, command_lines, marked

pytestmark = pytest.mark.integration


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    """The run in its own session, stderr to a file the test reads while it runs."""
    log = cwd / "stderr.log"
    proc = subprocess.Popen(
        hpcinfer_cmd(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
        stderr=log.open("w"), text=True, start_new_session=True,
    )  # fmt: skip
    return proc, log


def _status(out: Path, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    ran = run_cli(["status", str(out), "--json"], cwd=cwd, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def _gone(proc: subprocess.Popen[str], log: Path) -> str | None:
    return (
        None if proc.poll() is None else f"it exited {proc.returncode}: {log.read_text()[-2000:]}"
    )


def test_status_shows_the_running_job_then_the_finished_one(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_prompts(tmp_path / "prompts.txt", 3000)
    args = ["run", "prompts.txt", "-o", "out", "--workers", "1", "--max-tokens", "64",
            "--ignore-eos", "--unit-size", "10"]  # fmt: skip
    proc, log = _start(args, tmp_path, cli_env)
    out = tmp_path / "out"
    status_file = out / "status.json"

    def running() -> dict[str, Any] | None:
        if not status_file.exists():
            return None
        found = job_status(out)
        return found if found["state"] == "running" and found["records_done"] else None

    seen = wait_for(
        running, 300, "a running status with finished records", give_up=lambda: _gone(proc, log)
    )
    assert seen["records_total"] == 3000 and seen["pid"] == proc.pid
    assert seen["records_left"] == 3000 - seen["records_done"]
    assert [w["state"] for w in seen["workers"]] in (["generating"], ["waiting"])
    shown = _status(out, tmp_path, cli_env)  # the command, while (or just after) it runs
    assert shown["state"] == "running" or (proc.poll() is not None and shown["state"] == "ok")
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finished = _status(out, tmp_path, cli_env)
    assert finished["state"] == "ok" and finished["records_done"] == 3000
    assert finished["records_left"] == 0 and finished["output_tokens_per_s"] > 0
    assert not status_file.exists()
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["wall_s"] > summary["generation_s"] > 0
    text = log.read_text()
    assert "workers loading the model: 0 of 1 ready" in text and "exporting results" in text
    # the closing progress line gives the summary's own figure (the same definition)
    last = [line for line in text.splitlines() if "3000/3000 records" in line][-1]
    shown = float(last.split(" output tok/s")[0].rsplit(", ", 1)[1])
    assert shown == pytest.approx(summary["output_tokens_per_s"], rel=0.05)


def test_ctrl_c_during_start_up_says_what_it_does_and_the_second_aborts(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_prompts(tmp_path / "prompts.txt", 200)
    mark = uuid.uuid4().hex
    env = dict(cli_env, HPCINFER_TEST_MARK=mark)
    args = ["run", "prompts.txt", "-o", "out", "--workers", "2", "--max-tokens", "32"]
    proc, log = _start(args, tmp_path, env)
    status_file = tmp_path / "out" / "status.json"
    wait_for(
        lambda: (
            status_file.exists()
            and "loading the model" in json.loads(status_file.read_text())["phase"]
        ),
        300,
        "the workers to be loading the model",
        give_up=lambda: _gone(proc, log),
        interval=0.1,
    )
    assert len(marked(mark)) > 1, "the workers were started"
    os.kill(proc.pid, signal.SIGINT)
    wait_for(
        lambda: "Ctrl-C again to abort" in log.read_text(),
        10,
        "the stop message",
        give_up=lambda: _gone(proc, log),
        interval=0.1,
    )
    assert "stopping (signal SIGINT): finishing 0 unit(s) in flight" in log.read_text()
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=10)
    assert code == 4, log.read_text()[-3000:]
    assert_no_orphans(mark, timeout=10)
    assert not marked(mark), command_lines(marked(mark))
    after = _status(tmp_path / "out", tmp_path, cli_env)
    assert after["state"] == "incomplete" and after["records_left"] == 200
