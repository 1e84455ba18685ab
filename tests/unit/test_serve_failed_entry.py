"""A serve that fails before starting any server lists itself as failed in the registry, so
`hpcinfer serve & hpcinfer endpoints --wait 55m` in a job script ends at once with the
reason, not after 55 minutes (the real commands, as a job script runs them)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hpcinfer.core.endpoints_registry import FAILED, Endpoint, read_registry, write_registry
from hpcinfer.serve.checks import wait_until_up
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.failed_entry import scheduler_job
from tests.conftest import hpcinfer_cmd

QUICK_S = 60.0  # the wait is 55 minutes; ending well before says it ended on the failure


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PBS_JOBID", "SLURM_JOB_ID")}
    return subprocess.run(
        hpcinfer_cmd(*args), cwd=cwd, env=full | env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_a_serve_that_fails_before_starting_ends_the_wait_at_once(tmp_path: Path) -> None:
    serve = cli(["serve", "--model", str(tmp_path / "no-model"), "--endpoints", "e.json"],
                tmp_path, PBS_JOBID="77.aurora")  # fmt: skip
    assert serve.returncode == 2
    (entry,) = read_registry(tmp_path / "e.json")
    assert entry.state == FAILED and "no-model" in (entry.error or "")
    # The failed entry was written before the wait began: the same job's, so it counts.
    began = time.monotonic()
    wait = ["endpoints", "--endpoints", "e.json", "--expect", "1", "--wait", "55m"]
    done = cli(wait, tmp_path, PBS_JOBID="77.aurora")
    assert time.monotonic() - began < QUICK_S
    assert done.returncode == 1, done.stderr
    assert "will not come up" in done.stderr and "no-model" in done.stderr


def test_an_earlier_jobs_failed_registry_is_still_waited_past(tmp_path: Path) -> None:
    """Another job's failure, written before this wait: a new serve may be replacing it."""
    assert cli(["serve", "--model", str(tmp_path / "no-model"), "--endpoints", "e.json"],
               tmp_path, PBS_JOBID="76.aurora").returncode == 2  # fmt: skip
    done = cli(["endpoints", "--endpoints", "e.json", "--wait", "1"], tmp_path, PBS_JOBID="77")
    assert done.returncode == 1
    assert "not all up after" in done.stderr and "will not come up" not in done.stderr


def test_a_failed_entry_ends_a_wait_for_more_endpoints_than_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBS_JOBID", "77.aurora")
    registry = tmp_path / "e.json"
    failed = Endpoint("http://127.0.0.1:9", "m", state=FAILED, error="boom")
    write_registry(registry, [failed], job=scheduler_job())
    began = time.monotonic()
    with pytest.raises(ServeError, match="boom"):
        wait_until_up(registry, [], 600, None, expect=2, poll_s=0.1)
    assert time.monotonic() - began < QUICK_S
