"""`hpcinfer submit/status/cancel` against a real one-node Slurm (slurmctld + slurmd + munged).

The cluster is started once per session in a temporary directory (see tests/slurm_cluster.py;
Slurm and munge are installed with apt-get when missing). The job runs the built-in tiny
model with two srun tasks on the node: two ranks of one job, coordinated by rank 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import read_rows, require, run_cli, write_prompts
from tests.slurm_cluster import SlurmCluster, install_slurm, missing_programs, start_cluster

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 240  # about 30 s on an idle 2-core machine; far more under load


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if missing_programs():
        problem = install_slurm()
        require("Slurm (slurm-wlm, munge)", problem is None, problem or "")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    pids = {name: proc.pid for name, proc in cluster.procs.items()}
    alive = cluster.stop()
    assert not alive, f"Slurm daemons still running after stop: {alive} (pids {pids})"


@pytest.fixture()
def env(slurm: SlurmCluster, cli_env: dict[str, str]) -> dict[str, str]:
    """The hpcinfer environment (tiny-model cache) plus the test cluster's slurm.conf."""
    return {**cli_env, "SLURM_CONF": str(slurm.conf)}


def _status(job_id: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    proc = run_cli(["status", job_id, "--scheduler", "slurm", "--json"], cwd, env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _wait_final(job_id: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = _status(job_id, cwd, env)
    while status["state"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(2)
        status = _status(job_id, cwd, env)
    return status


def _write_spec(folder: Path, extra_job: str = "") -> None:
    write_prompts(folder / "a.txt", 7)
    write_prompts(folder / "b.txt", 5, words=5)
    (folder / "spec.yaml").write_text(
        "inputs:\n  paths: [a.txt, b.txt]\n"
        "sampling:\n  max_tokens: 8\n  temperature: 0\n"
        "output:\n  dir: out\n"
        "workers:\n  count: 1\n  unit_size: 4\n"
        "job:\n  name: hpcinfer-test\n  ranks_per_node: 2\n  walltime: '00:10:00'\n" + extra_job,
        encoding="utf-8",
    )


def test_submitted_job_completes_with_every_record_once(
    slurm: SlurmCluster, env: dict[str, str], tmp_path: Path
) -> None:
    _write_spec(tmp_path)
    proc = run_cli(["submit", "spec.yaml", "--scheduler", "slurm"], tmp_path, env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout

    status = _wait_final(job_id, tmp_path, env)
    job_dir = tmp_path / "out" / "job"
    log = job_dir / f"slurm-{job_id}.out"
    output = log.read_text(errors="replace") if log.exists() else "(no job output file)"
    assert status["state"] == "COMPLETED", f"{status}\n--- {log}\n{output[-6000:]}"
    assert status["exit_code"] == 0

    rows = read_rows(tmp_path / "out" / "results.jsonl")
    keys = sorted((Path(r["source"]).name, r["line"]) for r in rows)
    expected = sorted([("a.txt", n) for n in range(1, 8)] + [("b.txt", n) for n in range(1, 6)])
    assert keys == expected  # every record, exactly once
    assert all(r["status"] == "ok" for r in rows)
    # The job ran the saved spec copy through srun with this venv's hpcinfer, and its
    # environment (passed on by sbatch) held the tiny-model cache.
    script = (job_dir / "job.slurm").read_text()
    assert f"srun --nodes 1 --ntasks-per-node 2 {sys.executable} -m hpcinfer run " in script
    assert f"{job_dir / 'spec.yaml'} --launcher srun" in script
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_info["model_path"].startswith(env["HPCINFER_CACHE"])
    # Both srun tasks took part as ranks of the one job (rank 0 coordinating).
    assert sorted(w["rank"] for w in run_info["summary"]["workers"]) == [0, 1]
    assert f"submitted job.slurm as job {job_id}" in (job_dir / "jobs.log").read_text()
    assert f"job {job_id} exited 0" in (job_dir / "jobs.log").read_text()

    plain = run_cli(["status", job_id, "--scheduler", "slurm"], tmp_path, env, timeout=60)
    assert plain.returncode == 0 and f"job {job_id}: COMPLETED" in plain.stdout


def test_cancel_moves_a_pending_job_to_cancelled(
    slurm: SlurmCluster, env: dict[str, str], tmp_path: Path
) -> None:
    # --begin keeps the job pending, so it is cancelled in a known state and costs no CPU.
    _write_spec(tmp_path, "  extra_directives: ['--begin=now+3600']\n")
    proc = run_cli(["submit", "spec.yaml", "--scheduler", "slurm"], tmp_path, env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert _status(job_id, tmp_path, env)["state"] == "PENDING"

    cancelled = run_cli(["cancel", job_id, "--scheduler", "slurm"], tmp_path, env, timeout=60)
    assert cancelled.returncode == 0, cancelled.stderr
    status = _wait_final(job_id, tmp_path, env)
    assert status["state"] == "CANCELLED", status
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_run_inside_sbatch_starts_its_own_srun_ranks(
    slurm: SlurmCluster, env: dict[str, str], tmp_path: Path
) -> None:
    """`hpcinfer run --launcher srun` in a batch script (which has SLURM_PROCID=0 and
    SLURM_NTASKS=2 without being a task) starts the ranks with srun itself."""
    write_prompts(tmp_path / "prompts.txt", 16)
    run = f"{sys.executable} -m hpcinfer run prompts.txt -o out --launcher srun --max-tokens 8"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", f"--chdir={tmp_path}",
         f"--output={tmp_path / 'job.out'}", f"--wrap={run} --unit-size 4 --json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    status = _wait_final(job_id, tmp_path, env)
    output = (tmp_path / "job.out").read_text(errors="replace")
    assert status["state"] == "COMPLETED", f"{status}\n{output[-6000:]}"
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["id"] for r in rows] == [f"prompts.txt:{i}" for i in range(1, 17)]
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert sorted(w["rank"] for w in run_info["summary"]["workers"]) == [0, 1]
