"""Real CPU vLLM servers started by `hpcinfer serve`, driven by `hpcinfer run --engine openai`.

One fleet of two one-core servers serves the module (each start costs ~30 s here); the test
that kills a server runs last. The one-shot `--engine vllm-server` test starts its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.core.endpoints_registry import read_registry
from tests.conftest import hpcinfer_cmd, read_rows, run_cli, start_cli, wait_for_units
from tests.harness import wait_for
from tests.processes import assert_no_orphans, marked

pytestmark = pytest.mark.integration


def _workload(path: Path, count: int) -> dict[str, int]:
    expected = {}
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            budget = 8 + (i * 7) % 41
            handle.write(json.dumps({"id": f"r{i}", "prompt": f"story {i} of", "n": budget}) + "\n")
            expected[f"r{i}"] = budget
    return expected


@pytest.fixture(scope="module")
def fleet(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`hpcinfer serve --servers 2` for the module; at the end SIGTERM must stop it cleanly
    (exit 0, every server stopped or dead, nothing left running)."""
    root = tmp_path_factory.mktemp("fleet")
    registry = root / "endpoints.json"
    mark = uuid.uuid4().hex
    env = dict(cli_env, HPCINFER_TEST_MARK=mark)
    proc = start_cli(
        hpcinfer_cmd("serve", "--servers", "2", "--endpoints", str(registry), "--port", "8610"),
        root,
        env,
    )
    info: dict[str, Any] = {"registry": registry, "env": env}
    try:
        ready = run_cli(["endpoints", str(registry), "--wait", "480"], root, env, 500)
        assert ready.returncode == 0, ready.stdout + ready.stderr + _stderr(proc)
        assert "2 up, 0 down" in ready.stdout
        yield info
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert {e.state for e in read_registry(registry)} <= {"stopped", "dead"}
        assert_no_orphans(mark, "--port 8610", "--port 8611")
        after = run_cli(["endpoints", str(registry)], root, env, 60)
        assert after.returncode == 1 and "0 up, 2 down" in after.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for pid in marked(mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return ""
    return proc.stderr.read() if proc.stderr else ""


def test_a_job_is_dispatched_across_both_servers(fleet: dict[str, Any], tmp_path: Path) -> None:
    cli_env = fleet["env"]
    entries = read_registry(fleet["registry"])
    assert [e.state for e in entries] == ["ready", "ready"]
    assert sorted(d for e in entries for d in e.devices) == ["core0", "core1"]
    expected = _workload(tmp_path / "w.jsonl", 240)
    done = run_cli(
        ["run", "w.jsonl", "--engine", "openai", "--endpoints", str(fleet["registry"]),
         "--max-tokens-field", "n", "--ignore-eos", "-o", "out", "--json"],
        tmp_path, cli_env, 300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary["endpoints"]) == {e.url for e in entries}
    assert all(n >= 20 for n in summary["endpoints"].values()), summary["endpoints"]
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {r["id"]: r["output_tokens"] for r in rows} == expected  # ids kept, usage exact
    assert all(r["ttft_s"] and r["latency_s"] >= r["ttft_s"] for r in rows)
    assert rows[0]["model"] == entries[0].model


def test_kill_9_of_a_server_mid_dispatch_loses_nothing(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    cli_env = fleet["env"]
    expected = _workload(tmp_path / "w.jsonl", 600)
    proc = start_cli(
        hpcinfer_cmd(
            "run", "w.jsonl", "--engine", "openai", "--endpoints", str(fleet["registry"]),
            "--max-tokens-field", "n", "--ignore-eos", "-o", "out", "--json",
            "--unit-size", "8",
        ),
        tmp_path,
        cli_env,
    )  # fmt: skip
    wait_for_units(tmp_path / "out", 4, proc)
    victim = read_registry(fleet["registry"])[1]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {r["id"]: r["output_tokens"] for r in rows} == expected  # every record, once
    summary = json.loads(out)
    assert summary["records_ok"] == 600

    def victim_state() -> str:
        return {e.url: e.state for e in read_registry(fleet["registry"])}[victim.url]

    wait_for(lambda: victim_state() == "dead", 60, "the killed server dead", state=victim_state)
    check = run_cli(["endpoints", str(fleet["registry"])], tmp_path, cli_env, 60)
    assert check.returncode == 1 and "1 up, 1 down" in check.stdout + check.stderr


def test_one_shot_vllm_server_job_and_rerun(cli_env: dict[str, str], tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    cli_env = dict(cli_env, HPCINFER_TEST_MARK=mark)
    expected = _workload(tmp_path / "w.jsonl", 120)
    # One server: spreading over several is the fixture's test; this one is the lifecycle.
    args = ["run", "w.jsonl", "--engine", "vllm-server", "--servers", "1", "--max-tokens-field",
            "n", "--ignore-eos", "-o", "out", "--json", "--set", "serve.port=8620"]  # fmt: skip
    done = run_cli(args, tmp_path, cli_env, 500)
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {r["id"]: r["output_tokens"] for r in rows} == expected
    entries = read_registry(tmp_path / "out" / "endpoints.json")
    assert [e.state for e in entries] == ["stopped"]
    assert sum(json.loads(done.stdout)["endpoints"].values()) == 120
    assert_no_orphans(mark, "--port 8620")
    again = run_cli(args, tmp_path, cli_env, 120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["records_this_run"] == 0
    assert "starting" not in again.stderr  # a finished job starts no server
    assert_no_orphans(mark, "--port 8620")
