"""Inside a scheduler job, the run stops before the walltime and a rerun finishes the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_rows, run_cli, write_prompts

pytestmark = pytest.mark.integration


def test_run_stops_before_the_slurm_walltime_then_resumes(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The job has 62 s left: less a 60 s margin, the run may take work for 2 s, which ends
    # before the engine is up, whatever the machine's speed.
    squeue = bin_dir / "squeue"
    squeue.write_text('#!/bin/sh\n[ "$3" = 4242 ] && echo "1:02"\n')
    squeue.chmod(0o755)
    write_prompts(tmp_path / "prompts.txt", 100)
    args = ["run", "prompts.txt", "-o", "out", "--max-tokens", "48", "--ignore-eos"]
    args += ["--unit-size", "8", "--workers", "1", "--json"]
    in_job = dict(cli_env, SLURM_JOB_ID="4242", PATH=f"{bin_dir}:{cli_env['PATH']}")
    first = run_cli(args, tmp_path, in_job)
    assert first.returncode == 4, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert "walltime" in summary["message"] and "rerun" in summary["message"]
    assert summary["records_ok"] < 100
    assert "walltime limit of 2s reached" in summary["message"]

    second = run_cli(args, tmp_path, cli_env)  # the next job (no walltime known here)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["id"] for r in rows] == [f"prompts.txt:{i}" for i in range(1, 101)]
