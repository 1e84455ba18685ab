"""`hpcinfer submit/status/cancel` as a user runs them, with stand-in scheduler commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hpcinfer_cmd

STUB = """#!{python}
import json, os, sys
with open({log!r}, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({{"prog": {prog!r}, "argv": sys.argv[1:]}}) + "\\n")
sys.stdout.write({out!r})
sys.exit({code})
"""

SPEC = """\
inputs:
  paths: [prompts.txt]
output:
  dir: out
workers:
  profile: polaris
job:
  ranks_per_node: 1
  account: demo
"""


def stub(folder: Path, prog: str, out: str = "", code: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / prog
    log = str(folder / "calls.jsonl")
    path.write_text(STUB.format(python=sys.executable, log=log, prog=prog, out=out, code=code))
    path.chmod(0o755)


def calls(folder: Path) -> list[dict[str, object]]:
    log = folder / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def cli(
    args: list[str], cwd: Path, path: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    if path is not None:
        full["PATH"] = path
    return subprocess.run(
        hpcinfer_cmd(*args), cwd=cwd, env=full, capture_output=True, text=True, timeout=60
    )


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "prompts.txt").write_text("hello\n")
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


def test_dry_run_prints_the_script_and_writes_nothing(workdir: Path) -> None:
    done = cli(
        ["submit", "spec.yaml", "--dry-run", "--nodes", "3", "--walltime", "2h", "--queue",
         "debug", "--resubmit", "2", "--account", "other"],
        workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert script.startswith("#!/bin/bash -l\n#PBS ")  # polaris: PBS
    for line in ("#PBS -l select=3", "#PBS -l walltime=02:00:00", "#PBS -q debug",
                 "#PBS -A other", 'resubmits_left="${HPCINFER_RESUBMITS_LEFT:-2}"'):  # fmt: skip
        assert line in script
    assert f"{workdir}/out/job/spec.yaml --launcher mpi" in script
    assert "nothing written or submitted" in done.stderr
    assert not (workdir / "out").exists()


def test_submit_detects_slurm_writes_the_job_files_and_prints_the_id(
    workdir: Path, tmp_path: Path
) -> None:
    stubs = tmp_path / "stubs"
    stub(stubs, "sbatch", out="4242\n")
    done = cli(["submit", "spec.yaml", "--set", "workers.profile=cpu"], workdir,
               path=f"{stubs}:/usr/bin:/bin")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4242\n"
    job_dir = workdir / "out" / "job"
    script = job_dir / "job.slurm"
    assert calls(stubs) == [
        {"prog": "sbatch",
         "argv": ["--parsable", "--export=ALL,HPCINFER_RESUBMITS_LEFT=0", str(script)]}
    ]  # fmt: skip
    assert "#SBATCH --account=demo" in script.read_text()
    assert f"{workdir}/prompts.txt" in (job_dir / "spec.yaml").read_text()
    assert "submitted job.slurm as job 4242" in (job_dir / "jobs.log").read_text()
    assert "hpcinfer status 4242" in done.stderr


def test_submit_without_a_scheduler_names_the_fix(workdir: Path, tmp_path: Path) -> None:
    done = cli(["submit", "spec.yaml", "--set", "workers.profile=cpu"], workdir,
               path=str(tmp_path / "empty"))  # fmt: skip
    assert done.returncode == 1
    assert "neither sbatch (Slurm) nor qsub (PBS) is on PATH" in done.stderr
    assert "--scheduler" in done.stderr


def test_sbatch_rejection_is_shown(workdir: Path, tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    stub(stubs, "sbatch", out="sbatch: error: Invalid account or account/partition\n", code=1)
    done = cli(["submit", "spec.yaml", "--scheduler", "slurm"], workdir,
               path=f"{stubs}:/usr/bin:/bin")  # fmt: skip
    assert done.returncode == 1
    assert "Invalid account" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheduler", "lsf"], "choose pbs or slurm"),
        (["--walltime", "90"], "--walltime"),
        (["--nodes", "0"], "--nodes"),
        (["--set", "job.env.HF_TOKEN=hf_x"], "looks like a secret"),
        (["--set", "job.filesystems=[home]", "--scheduler", "slurm"], "not a SLURM option"),
    ],
)
def test_bad_input_exits_2_with_a_message(workdir: Path, args: list[str], message: str) -> None:
    done = cli(["submit", "spec.yaml", "--dry-run", *args], workdir)
    assert done.returncode == 2
    assert message in done.stderr
    assert "hf_x" not in done.stderr and "Traceback" not in done.stderr


def test_submit_takes_inputs_and_run_flags_like_run(workdir: Path) -> None:
    done = cli(
        ["submit", "prompts.txt", "--model", "/models/m", "-o", "out", "--nodes", "4",
         "--walltime", "1.5h", "--profile", "polaris", "--scheduler", "pbs", "--dry-run"],
        workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "#PBS -l select=4" in done.stdout and "#PBS -l walltime=01:30:00" in done.stdout
    assert f"{workdir}/out/job/spec.yaml" in done.stdout  # -o out, as `run -o out`
    done = cli(["submit", "spec.yaml", "prompts.txt", "other.yaml", "--dry-run"], workdir)
    assert done.returncode == 2 and "only one spec file" in done.stderr


QSTAT_JSON = json.dumps({"Jobs": {"77.srv": {"job_state": "F", "Exit_status": -29}}})


def test_status_and_cancel_through_the_pbs_commands(workdir: Path, tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    stub(stubs, "qstat", out=QSTAT_JSON)
    stub(stubs, "qdel")
    path = f"{stubs}:/usr/bin:/bin"
    plain = cli(["status", "77.srv", "--scheduler", "pbs"], workdir, path=path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("job 77.srv: TIMEOUT (pbs state F, exit code -29)")
    as_json = cli(["status", "77.srv", "--scheduler", "pbs", "--json"], workdir, path=path)
    assert json.loads(as_json.stdout)["state"] == "TIMEOUT"
    cancelled = cli(["cancel", "77.srv", "--scheduler", "pbs"], workdir, path=path)
    assert cancelled.returncode == 0 and "cancel requested for job 77.srv" in cancelled.stdout
    assert [c["argv"] for c in calls(stubs) if c["prog"] == "qdel"] == [["77.srv"]]


def test_status_refuses_option_like_ids(workdir: Path) -> None:
    done = cli(["status", "--scheduler", "slurm", "--", "--all"], workdir)
    assert done.returncode == 2 and "not a job id" in done.stderr


def test_help_texts_show_examples(workdir: Path) -> None:
    done = cli(["submit", "--help"], workdir)
    assert done.returncode == 0
    assert "--dry-run" in done.stdout and "Examples" in done.stdout
    assert "TIMEOUT" in cli(["status", "--help"], workdir).stdout
