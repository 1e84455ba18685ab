"""Nothing is lost if the job dies: kill -9, a dead worker, SIGTERM and the time limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    hpcinfer_cmd,
    read_rows,
    run_cli,
    start_cli,
    wait_for_units,
    write_prompts,
)
from tests.processes import children, workers_of

pytestmark = pytest.mark.integration


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_cli(hpcinfer_cmd(*args), cwd, env)


def _assert_exactly_once(out: Path, prompts: list[str]) -> None:
    rows = read_rows(out / "results.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    assert ids == [f"prompts.txt:{i}" for i in range(1, len(prompts) + 1)]
    assert all(r["status"] == "ok" for r in rows)
    unit_rows = sum(len(read_rows(p)) for p in (out / "units").glob("*.jsonl"))
    assert unit_rows == len(prompts)
    assert not list((out / "units").glob(".*tmp")), "a temp file of a commit was left"


COMMON = ["--max-tokens", "48", "--ignore-eos", "--unit-size", "10", "--json"]


def test_kill9_mid_run_then_rerun_gives_every_record_once(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # 200 units: an idle machine's engine (about 19k tokens/s) takes seconds for them, so the
    # kill lands mid-run however fast the engine is
    prompts = write_prompts(tmp_path / "prompts.txt", 2000)
    args = ["run", "prompts.txt", "--out", "out", "--workers", "1", *COMMON]
    proc = _start(args, tmp_path, cli_env)
    wait_for_units(tmp_path / "out", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list((tmp_path / "out" / "units").glob("*.jsonl")))
    assert 3 <= committed < 200

    again = run_cli(args, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["resumed"] is True
    assert 0 < summary["records_this_run"] <= 2000 - 10 * committed
    _assert_exactly_once(tmp_path / "out", prompts)


def test_a_worker_killed_mid_run_loses_nothing(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # 400 units: with 40, two workers on an idle machine finished the job before the test
    # could find one to kill
    prompts = write_prompts(tmp_path / "prompts.txt", 4000)
    proc = _start(
        ["run", "prompts.txt", "--out", "out", "--workers", "2", *COMMON], tmp_path, cli_env
    )
    wait_for_units(tmp_path / "out", 2, proc)
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert any(w["error"] for w in summary["workers"])  # the dead worker is reported
    _assert_exactly_once(tmp_path / "out", prompts)


def test_sigterm_stops_cleanly_with_the_incomplete_code(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_prompts(tmp_path / "prompts.txt", 2000)
    proc = _start(
        ["run", "prompts.txt", "--out", "out", "--workers", "1", *COMMON], tmp_path, cli_env
    )
    wait_for_units(tmp_path / "out", 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["status"] == "incomplete" and "rerun" in summary["message"]
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert 0 < len(rows) < 2000
    assert len(rows) == summary["records_ok"]
    assert not children(proc.pid)


def test_time_limit_then_resume_completes(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # ~290k tokens against a 12 s limit, start-up included: an idle machine's engine (about
    # 19k tokens/s after an 8 s start) made 192k tokens within 20 s, finishing the job the
    # limit was to cut short; a slow start that leaves no time at all is still incomplete
    prompts = write_prompts(tmp_path / "prompts.txt", 6000)
    args = ["run", "prompts.txt", "--out", "out", "--workers", "1", *COMMON]
    first = run_cli([*args, "--time-limit", "12s"], cwd=tmp_path, env=cli_env)
    assert first.returncode == 4, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert "time limit" in summary["message"] and summary["records_ok"] < 6000
    second = run_cli(args, cwd=tmp_path, env=cli_env)  # the time limit is not part of the spec
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_exactly_once(tmp_path / "out", prompts)


def test_changed_spec_is_refused_unless_restart(tmp_path: Path, cli_env: dict[str, str]) -> None:
    write_prompts(tmp_path / "prompts.txt", 5)
    base = ["run", "prompts.txt", "--out", "out", "--workers", "1", "--json"]
    assert run_cli([*base, "--max-tokens", "8"], cwd=tmp_path, env=cli_env).returncode == 0
    changed = run_cli([*base, "--max-tokens", "9"], cwd=tmp_path, env=cli_env)
    assert changed.returncode == 2
    assert "different spec" in changed.stderr and "--restart" in changed.stderr
    assert "max_tokens" in changed.stderr
    (tmp_path / "prompts.txt").write_text("a new prompt\n", encoding="utf-8")
    edited = run_cli([*base, "--max-tokens", "8"], cwd=tmp_path, env=cli_env)
    assert edited.returncode == 2 and "input_files" in edited.stderr
    restarted = run_cli([*base, "--max-tokens", "8", "--restart"], cwd=tmp_path, env=cli_env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert len(read_rows(tmp_path / "out" / "results.jsonl")) == 1
