"""The PBS job script, run for real by bash with stand-ins for qsub, mpiexec and module.

The stand-ins are put first on PATH and record their argv and environment as JSON lines,
so the tests see exactly what the job would start: the launcher line, the environment
block, and the resubmission when the run exits 4. Hostile paths and values must reach the
stand-ins as plain data and execute nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.errors import SpecError
from hpcinfer.spec import build_spec
from hpcinfer.submit.prepare import PreparedJob, prepare_job

RECORDED_ENV = (
    "HPCINFER_RESUBMITS_LEFT",
    "http_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "ZE_FLAT_DEVICE_HIERARCHY",
    "JOB_NOTE",
    "PBS_NODEFILE",
    "VIRTUAL_ENV",
)

STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as log:
    env = {{k: os.environ.get(k) for k in {names!r}}}
    log.write(json.dumps({{"prog": {prog!r}, "argv": sys.argv[1:], "env": env,
                          "cwd": os.getcwd()}}) + "\\n")
{tail}
"""
TAILS = {
    "mpiexec": 'sys.exit(int(os.environ.get("STUB_RUN_EXIT", "0")))',
    "qsub": 'print("124.stub-pbs"); sys.exit(int(os.environ.get("STUB_QSUB_EXIT", "0")))',
    "module": "sys.exit(0)",
}


def make_stubs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prog, tail in TAILS.items():
        path = folder / prog
        path.write_text(
            STUB.format(python=sys.executable, names=RECORDED_ENV, prog=prog, tail=tail)
        )
        path.chmod(0o755)
    return folder


def make_venv(folder: Path) -> Path:
    """A stand-in venv: bin/activate puts its bin first on PATH, where an hpcinfer waits."""
    (folder / "bin").mkdir(parents=True)
    bin_dir = shlex.quote(str(folder / "bin"))
    (folder / "bin" / "activate").write_text(
        f'export VIRTUAL_ENV={shlex.quote(str(folder))}\nexport PATH={bin_dir}:"$PATH"\n'
    )
    (folder / "bin" / "hpcinfer").write_text("#!/bin/sh\nexit 0\n")
    (folder / "bin" / "hpcinfer").chmod(0o755)
    return folder


def prepare(workdir: Path, out: Path, job: dict[str, Any], profile: str = "aurora") -> PreparedJob:
    workdir.mkdir(parents=True, exist_ok=True)
    data = {
        "inputs": {"paths": ["prompts.txt"]},
        "output": {"dir": str(out)},
        "workers": {"profile": profile},
        "job": job,
    }
    spec = build_spec(data, "test spec")
    return prepare_job(spec, workdir, "pbs", None, lambda _: None)


class Job:
    """Runs the written script as a PBS job would, and reads what the stand-ins saw."""

    def __init__(self, prepared: PreparedJob, tmp: Path) -> None:
        prepared.write()
        self.prepared = prepared
        self.log = tmp / "stubs.jsonl"
        self.stubs = make_stubs(tmp / "stubs")
        self.nodefile = tmp / "nodefile"
        self.nodefile.write_text("x1001.hsn\n" * 12 + "x1002.hsn\n" * 12)

    def run(self, run_exit: int, resubmits_left: int | None = None, **extra: str) -> Any:
        env = {
            "PATH": f"{self.stubs}:{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/root"),
            "STUB_LOG": str(self.log),
            "STUB_RUN_EXIT": str(run_exit),
            "PBS_JOBID": "123.stub-pbs",
            "PBS_NODEFILE": str(self.nodefile),
            **extra,
        }
        if resubmits_left is not None:
            env["HPCINFER_RESUBMITS_LEFT"] = str(resubmits_left)
        self.log.unlink(missing_ok=True)
        done = subprocess.run(
            ["bash", str(self.prepared.files.script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.log.parent,
        )
        return done

    def calls(self, prog: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [entry for entry in entries if entry["prog"] == prog]


@pytest.fixture()
def job(tmp_path: Path) -> Job:
    venv = make_venv(tmp_path / "venv")
    prepared = prepare(
        tmp_path / "work",
        tmp_path / "out",
        {
            "nodes": 2,
            "cpu_bind": "depth",
            "venv": str(venv),
            "env": {"JOB_NOTE": "two words"},
            "resubmit": 2,
        },
    )
    return Job(prepared, tmp_path)


def test_launcher_line_and_environment_block(job: Job, tmp_path: Path) -> None:
    done = job.run(0)
    assert done.returncode == 0, done.stderr
    [module] = job.calls("module")
    assert module["argv"] == ["load", "frameworks"]  # the aurora profile's site module
    [mpiexec] = job.calls("mpiexec")
    spec_copy = str(tmp_path / "out" / "job" / "spec.yaml")
    assert mpiexec["argv"] == [
        "-n", "24", "-ppn", "12", "--cpu-bind", "depth",
        "hpcinfer", "run", spec_copy, "--launcher", "mpi",
    ]  # fmt: skip
    env = mpiexec["env"]
    assert env["http_proxy"] == env["HTTPS_PROXY"] == "http://proxy.alcf.anl.gov:3128"
    assert env["no_proxy"] == "localhost,127.0.0.1"
    assert env["ZE_FLAT_DEVICE_HIERARCHY"] == "COMPOSITE"
    assert env["JOB_NOTE"] == "two words"
    assert env["VIRTUAL_ENV"] == str(tmp_path / "venv")  # the venv was activated
    assert env["PBS_NODEFILE"] == str(job.nodefile)
    assert mpiexec["cwd"] == str(tmp_path / "work")  # where the user submitted from
    assert job.calls("qsub") == []
    assert "job 123.stub-pbs exited 0" in (tmp_path / "out" / "job" / "jobs.log").read_text()


def test_exit_4_resubmits_the_saved_script_with_the_count_decreasing(
    job: Job, tmp_path: Path
) -> None:
    script = str(job.prepared.files.script)
    seen = []
    left: int | None = None  # the first job reads job.resubmit (2) from the script
    for _ in range(3):
        done = job.run(4, left, HF_TOKEN="hf_not_in_argv")
        assert done.returncode == 4, done.stderr  # the job exits with the run's code
        qsubs = job.calls("qsub")
        if not qsubs:
            break
        [qsub] = qsubs
        assert qsub["argv"][0] == "-v" and qsub["argv"][2] == script
        variables = qsub["argv"][1].split(",")
        # Names only: qsub reads HF_TOKEN's value from its environment, not from argv.
        assert "HF_TOKEN" in variables and "hf_not_in_argv" not in qsub["argv"][1]
        left = int(variables[0].removeprefix("HPCINFER_RESUBMITS_LEFT="))
        seen.append(left)
    assert seen == [1, 0]
    assert "no resubmissions left" in done.stderr
    log = (tmp_path / "out" / "job" / "jobs.log").read_text()
    assert log.count("resubmitted as 124.stub-pbs") == 2


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_other_exit_codes_do_not_resubmit(job: Job, code: int) -> None:
    done = job.run(code, 2)
    assert done.returncode == code
    assert job.calls("qsub") == []


def test_failed_resubmission_is_reported_and_the_exit_code_kept(job: Job) -> None:
    done = job.run(4, 1, STUB_QSUB_EXIT="1")
    assert done.returncode == 4
    assert "resubmitting failed" in done.stderr


def test_a_bad_resubmit_count_stops_before_the_run(job: Job) -> None:
    done = job.run(0, None, HPCINFER_RESUBMITS_LEFT="2; touch PWNED")
    assert done.returncode == 1 and "is not a count" in done.stderr
    assert job.calls("mpiexec") == []


def test_missing_venv_stops_with_a_message(tmp_path: Path) -> None:
    prepared = prepare(tmp_path / "w", tmp_path / "out", {"venv": str(tmp_path / "nope")})
    done = Job(prepared, tmp_path).run(0)
    assert done.returncode == 1
    assert f"no virtual environment at {tmp_path / 'nope'}" in done.stderr


HOSTILE = 'it\'s a "dir" $(touch PWNED) `touch PWNED` ; rm -rf {canary} &&'


def test_hostile_paths_and_values_stay_inert(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("alive")
    hostile = HOSTILE.format(canary=canary)
    workdir = tmp_path / f"work {hostile}"
    venv = make_venv(tmp_path / f"venv {hostile}")
    prepared = prepare(
        workdir,
        tmp_path / "out",
        {
            "venv": str(venv),
            "modules": [f"mod {hostile}"],
            "env": {"JOB_NOTE": hostile},
            "proxy": f"http://p:1/{hostile}",
            "resubmit": 1,
        },
    )
    job = Job(prepared, tmp_path)
    done = job.run(4)
    assert done.returncode == 4, done.stderr
    assert [c["argv"] for c in job.calls("module")][-1] == ["load", f"mod {hostile}"]
    [mpiexec] = job.calls("mpiexec")
    assert mpiexec["env"]["JOB_NOTE"] == hostile
    assert mpiexec["env"]["http_proxy"] == f"http://p:1/{hostile}"
    assert mpiexec["env"]["VIRTUAL_ENV"] == str(venv)
    assert mpiexec["cwd"] == str(workdir)
    assert len(job.calls("qsub")) == 1
    # Nothing ran: no PWNED file anywhere, the canary survived.
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()
    assert canary.read_text() == "alive"


def test_hostile_output_dir_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out $(touch PWNED)"
    with pytest.raises(SpecError, match="cannot go into #PBS/#SBATCH lines"):
        prepare(tmp_path / "w", out, {})
    assert not out.exists()
