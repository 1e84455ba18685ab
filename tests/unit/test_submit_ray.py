"""Job scripts with a Ray cluster around the run or the steps (job.ray, job.steps).

Golden files fix the rendered text (the Aurora example in examples/ included, so it cannot
rot). The PBS script is then run by bash with a stand-in `hpcinfer` and `mpiexec` that
record their argv, environment and the signals they get, so the tests see the order a real
job would: `ray up`, the run or the steps with HPCINFER_RAY_CLUSTER set, then the background
steps stopped and `ray down`, whichever way the script ends.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.errors import SpecError
from hpcinfer.spec import build_spec
from hpcinfer.submit.prepare import prepare_job
from tests.conftest import assert_golden
from tests.unit.test_submit_render import GOLDEN, PYTHON, WORKDIR, assert_bash_syntax, prepare

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "aurora-llama405b-ray.yaml"


AURORA_RAY: dict[str, Any] = {
    "model": "/lus/flare/projects/demo/models/Llama-3.1-8B-Instruct",
    "inputs": {"paths": ["prompts/"]},
    "output": {"dir": "out"},
    "workers": {"profile": "aurora"},
    "job": {
        "nodes": 4,
        "walltime": "01:00:00",
        "account": "demo",
        "queue": "prod",
        "filesystems": "flare:home",
        "conda_env": "/lus/flare/projects/demo/conda_envs/vllm",
        "ray": True,
        "ray_gpus_per_node": 12,
        "ray_interface": "hsn0",
        "resubmit": 1,
    },
}

PERLMUTTER_RAY: dict[str, Any] = {
    "inputs": {"paths": ["/global/cfs/demo/prompts.jsonl"]},
    "output": {"dir": "/pscratch/sd/d/demo/out"},
    "workers": {"profile": "perlmutter"},
    "job": {"nodes": 2, "account": "m1234", "constraint": "gpu", "ray": True},
}


def example_spec() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(
    ("name", "data", "scheduler"),
    [
        ("aurora-ray.pbs", AURORA_RAY, "pbs"),
        ("perlmutter-ray.slurm", PERLMUTTER_RAY, "slurm"),
        ("aurora-llama405b-ray.pbs", None, "pbs"),  # examples/aurora-llama405b-ray.yaml
    ],
)
def test_golden_scripts_with_a_ray_cluster(
    name: str, data: dict[str, Any] | None, scheduler: str, tmp_path: Path
) -> None:
    script = prepare(data or example_spec(), scheduler).script
    assert_golden(GOLDEN / name, script)
    assert_bash_syntax(script, tmp_path / name)


def _line(script: str, start: str) -> list[str]:
    return shlex.split(next(ln for ln in script.splitlines() if ln.startswith(start)))


def test_ray_up_uses_the_site_launcher_and_the_run_uses_the_cluster() -> None:
    pbs = prepare(AURORA_RAY, "pbs").script
    assert _line(pbs, "hpcinfer ray up")[:11] == [
        "hpcinfer", "ray", "up", "--launcher", "mpi", "--gpus-per-node", "12",
        "--interface", "hsn0", "--name", "$job_id",
    ]  # fmt: skip
    assert _line(pbs, "hpcinfer run") == [
        "hpcinfer", "run", str(WORKDIR / "out" / "job" / "spec.yaml"), "--launcher", "ray",
    ]  # fmt: skip
    assert "mpiexec" not in pbs  # the run is one driver; its workers are Ray actors
    slurm = prepare(PERLMUTTER_RAY, "slurm").script
    up = _line(slurm, f"{shlex.join(PYTHON)} ray up")
    assert up[len(PYTHON) + 2 : len(PYTHON) + 4] == ["--launcher", "srun"]
    assert "--gpus-per-node" not in up and "--interface" not in up  # the node's profile decides
    assert '--name "$job_id"' in slurm and 'job_id="${SLURM_JOB_ID:-unknown}"' in slurm


def test_plain_scripts_have_no_ray_and_no_exit_handler() -> None:
    script = prepare({**AURORA_RAY, "job": {**AURORA_RAY["job"], "ray": False,
                                             "ray_gpus_per_node": None,
                                             "ray_interface": None}}, "pbs").script  # fmt: skip
    assert "ray" not in script.replace("llama", "") and "trap" not in script


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"ray_interface": "hsn0"}, "job.ray_interface sets up the job's Ray cluster"),
        ({"ray_gpus_per_node": 8}, "add ray: true (--ray)"),
        ({"ray": True, "ray_interface": "hsn0; rm -rf ~"}, "a network interface name"),
        ({"steps": ["HF_TOKEN=hf_abc hpcinfer serve"]}, "job.steps entry 1 sets HF_TOKEN"),
        ({"steps": ["hpcinfer serve", "  "]}, "not blank"),
        ({"steps": ["hpcinfer serve \\"]}, "line continuation"),
        ({"steps": ["hpcinfer serve"], "stage_to": "/tmp/m"}, "make `hpcinfer stage"),
    ],
)
def test_bad_ray_and_step_settings_are_refused_naming_the_field(
    job: dict[str, Any], message: str
) -> None:
    with pytest.raises((SpecError, ValueError), match=re.escape(message)) as caught:
        prepare({"output": {"dir": "/tmp/out"}, "job": job}, "pbs")
    assert "hf_abc" not in str(caught.value)  # the refusal never echoes a secret


# --- the PBS script run by bash ---------------------------------------------------------

HPCINFER_STUB = """#!{python}
import json, os, signal, sys, time
log_path = os.environ["STUB_LOG"]
argv = sys.argv[1:]
words = [a for a in argv if not a.startswith("-")][:2]
what = " ".join(words if words[:1] in (["ray"], ["bench"]) else words[:1])

def log(event, **extra):
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(json.dumps({{"what": what, "event": event, "argv": argv,
            "cluster": os.environ.get("HPCINFER_RAY_CLUSTER"), **extra}}) + "\\n")

def stop(signum, frame):
    log("signal", signal=signum)
    sys.exit(0)

blocks = what in os.environ.get("STUB_BLOCK", "").split(",")
if blocks:
    signal.signal(signal.SIGTERM, stop)  # before "start": a test waiting for it can signal
log("start")
# Like `endpoints --wait`: wait (bounded) until another stand-in has started.
after = json.loads(os.environ.get("STUB_AFTER", "{{}}")).get(what)
deadline = time.monotonic() + 30
while after and time.monotonic() < deadline:
    with open(log_path, encoding="utf-8") as seen:
        if any(json.loads(line)["what"] + " start" == after for line in seen):
            break
    time.sleep(0.05)
while blocks:
    time.sleep(0.1)
codes = json.loads(os.environ.get("STUB_EXIT", "{{}}"))
sys.exit(int(codes.get(what, 0)))
"""


class RayJob:
    """Writes the script with a stand-in venv whose `hpcinfer` records what it is asked."""

    def __init__(self, tmp: Path, job: dict[str, Any], inputs: bool = True) -> None:
        venv = tmp / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text(
            f'export PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n'
        )
        stub = venv / "bin" / "hpcinfer"
        stub.write_text(HPCINFER_STUB.format(python=sys.executable))
        stub.chmod(0o755)
        (tmp / "stubs").mkdir()
        (tmp / "stubs" / "module").write_text("#!/bin/sh\nexit 0\n")  # the profile's module load
        (tmp / "stubs" / "module").chmod(0o755)
        (tmp / "work").mkdir()
        data: dict[str, Any] = {
            "output": {"dir": str(tmp / "out")},
            "workers": {"profile": "aurora"},
            "job": {"venv": str(venv), "nodes": 2, "ray": True, **job},
        }
        if inputs:
            data["inputs"] = {"paths": ["prompts.txt"]}
        self.prepared = prepare_job(
            build_spec(data, "test spec"), tmp / "work", "pbs", None, lambda _: None
        )
        self.prepared.write()
        self.log = tmp / "calls.jsonl"
        self.tmp = tmp

    def env(self, **extra: Any) -> dict[str, str]:
        values = {
            "PATH": f"{self.tmp / 'stubs'}:{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/root"),
            "STUB_LOG": str(self.log),
            "PBS_JOBID": "123.stub-pbs",
        }
        values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
        return values

    def start(self, **extra: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", str(self.prepared.files.script)],
            env=self.env(**extra),
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a batch job has
        )

    def run(self, **extra: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.prepared.files.script)],
            env=self.env(**extra),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def events(self) -> list[str]:
        return [f"{c['what']} {c['event']}" for c in self.calls()]

    def wait_for(self, event: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while event not in self.events():
            assert time.monotonic() < deadline, f"no {event!r} in {self.events()}"
            time.sleep(0.05)

    @property
    def cluster_file(self) -> str:
        return str(self.prepared.files.job_dir / "ray-123.stub-pbs.json")


def test_ray_up_then_the_run_on_the_cluster_then_ray_down(tmp_path: Path) -> None:
    job = RayJob(tmp_path, {"ray_interface": "hsn0"})
    done = job.run(STUB_EXIT={"run": 3})
    assert done.returncode == 3, done.stderr  # the run's exit code, after ray down
    assert job.events() == ["ray up start", "run start", "ray down start"]
    up, run, down = job.calls()
    assert up["argv"] == [
        "ray", "up", "--launcher", "mpi", "--interface", "hsn0",
        "--name", "123.stub-pbs", "--cluster-file", job.cluster_file,
    ]  # fmt: skip
    assert run["argv"][-2:] == ["--launcher", "ray"]
    assert run["cluster"] == job.cluster_file  # HPCINFER_RAY_CLUSTER is exported to the run
    assert down["argv"] == ["ray", "down", "--cluster-file", job.cluster_file]


def test_a_failed_ray_up_runs_nothing_and_still_takes_down_what_it_started(
    tmp_path: Path,
) -> None:
    job = RayJob(tmp_path, {})
    done = job.run(STUB_EXIT={"ray up": 1})
    assert done.returncode == 1
    assert "hpcinfer ray up failed" in done.stderr
    assert job.events() == ["ray up start", "ray down start"]


def test_a_failed_ray_down_is_reported_and_the_job_keeps_its_exit_code(tmp_path: Path) -> None:
    job = RayJob(tmp_path, {})
    done = job.run(STUB_EXIT={"ray down": 1})
    assert done.returncode == 0
    assert "hpcinfer ray down failed" in done.stderr and job.cluster_file in done.stderr


def test_sigterm_during_the_run_still_takes_the_cluster_down(tmp_path: Path) -> None:
    """qdel and the walltime send SIGTERM to every process of the job."""
    job = RayJob(tmp_path, {})
    proc = job.start(STUB_BLOCK="run")
    try:
        job.wait_for("run start")
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert job.events() == ["ray up start", "run start", "run signal", "ray down start"]


def test_steps_run_in_order_on_the_cluster_and_background_steps_stop_before_ray_down(
    tmp_path: Path,
) -> None:
    job = RayJob(
        tmp_path,
        {
            "steps": [
                'hpcinfer serve --backend ray --endpoints "$job_dir/endpoints.json" &',
                'hpcinfer endpoints --endpoints "$job_dir/endpoints.json" --wait 5m',
                "hpcinfer bench serve --num-prompts 3",
            ]
        },
        inputs=False,
    )
    done = job.run(STUB_BLOCK="serve", STUB_AFTER={"endpoints": "serve start"})
    assert done.returncode == 0, done.stderr
    events = job.events()
    assert events[0] == "ray up start" and events[-2:] == ["serve signal", "ray down start"]
    assert events.index("endpoints start") < events.index("bench serve start")
    endpoints = next(c for c in job.calls() if c["what"] == "endpoints")
    assert endpoints["argv"][2] == str(job.prepared.files.job_dir / "endpoints.json")
    assert all(c["cluster"] == job.cluster_file for c in job.calls())
    assert "run start" not in events  # the steps replace `hpcinfer run`


def test_the_first_failed_step_ends_the_steps_with_its_exit_code(tmp_path: Path) -> None:
    job = RayJob(
        tmp_path,
        {"steps": ["hpcinfer serve &", "hpcinfer endpoints --wait 1m", "hpcinfer bench serve"]},
        inputs=False,
    )
    done = job.run(
        STUB_BLOCK="serve", STUB_AFTER={"endpoints": "serve start"}, STUB_EXIT={"endpoints": 1}
    )
    assert done.returncode == 1
    assert "step 2 of 3 exited 1" in done.stderr
    assert "bench serve start" not in job.events()
    assert job.events()[-2:] == ["serve signal", "ray down start"]


def test_a_hostile_job_id_reaches_ray_up_as_one_plain_word(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("alive")
    job = RayJob(tmp_path, {})
    hostile = f'1.pbs"; rm -f {canary}; $(touch PWNED) `touch PWNED`'
    done = job.run(PBS_JOBID=hostile)
    assert done.returncode == 0, done.stderr
    up = job.calls()[0]
    assert up["argv"][up["argv"].index("--name") + 1] == hostile
    assert canary.read_text() == "alive" and not list(tmp_path.rglob("PWNED"))


def test_submit_flags_set_the_ray_fields(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "hpcinfer", "submit", "--scheduler", "pbs", "--dry-run", "-q",
            "-o", str(tmp_path / "out"), "--nodes", "2"]  # fmt: skip
    done = subprocess.run(
        [*argv, "--ray", "--ray-gpus-per-node", "8", "--ray-interface", "hsn0"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    up = _line(done.stdout, f"{shlex.join([sys.executable, '-m', 'hpcinfer'])} ray up")
    assert up[4:11] == ["up", "--launcher", "mpi", "--gpus-per-node", "8", "--interface", "hsn0"]
    refused = subprocess.run(
        [*argv, "--ray-interface", "hsn0"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "add ray: true (--ray)" in refused.stderr


def test_steps_without_ray_still_stop_their_background_commands(tmp_path: Path) -> None:
    job = RayJob(tmp_path, {"ray": False, "steps": ["hpcinfer serve &", "hpcinfer endpoints"]},
                 inputs=False)  # fmt: skip
    done = job.run(STUB_BLOCK="serve", STUB_AFTER={"endpoints": "serve start"})
    assert done.returncode == 0, done.stderr
    assert job.events()[-1] == "serve signal"
    assert not any(event.startswith("ray") for event in job.events())
    assert "Ray" not in job.prepared.script


def test_steps_call_the_installation_submit_ran_with_when_nothing_is_activated(
    tmp_path: Path,
) -> None:
    """No venv or conda in the job: `hpcinfer` in a step is this interpreter's hpcinfer."""
    data = {
        "output": {"dir": str(tmp_path / "out")},
        "workers": {"profile": "cpu"},
        "job": {"steps": ['hpcinfer --version > "$job_dir/version.txt"']},
    }
    prepared = prepare_job(build_spec(data, "test spec"), tmp_path, "pbs", None, lambda _: None)
    prepared.write()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), "PBS_JOBID": "7.pbs"}
    done = subprocess.run(
        ["bash", str(prepared.files.script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    from hpcinfer import __version__

    assert __version__ in (prepared.files.job_dir / "version.txt").read_text()
