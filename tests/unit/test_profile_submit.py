"""`hpcinfer profile submit`: one job script per experiment, nodes from the plan and the
hardware profile, every value quoted (the script is run here to prove it), golden files.

Regenerate the golden files only on purpose: HPCINFER_UPDATE_GOLDEN=1 pytest
tests/unit/test_profile_submit.py, then read the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcinfer.cluster import load_profile
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import JobScriptSpec
from hpcinfer.profile.experiment import ExperimentConfig, save_experiment
from hpcinfer.profile.jobs import render_profile_job
from tests.conftest import assert_golden
from tests.harness import InProcessCLI

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "profile"
DEMO = Path("/pscratch/sd/d/demo")
PYTHON = ["/opt/hpcinfer/venv/bin/python", "-m", "hpcinfer"]


def experiment(experiment_id: str = "E1.3_llama8b_tp4", **parallelism: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "experiment_id": experiment_id,
            "model": {"name": "meta-llama/Llama-3.1-8B", "precision": "bfloat16"},
            "parallelism": parallelism or {"tp": 4},
            "output_dir": experiment_id,
        }
    )


@pytest.mark.parametrize(
    ("name", "scheduler", "profile", "plan", "nsys"),
    [
        ("E1.3_llama8b_tp4.slurm", "slurm", "perlmutter", {"tp": 4}, False),
        ("E1.3_llama8b_tp4.nsys.slurm", "slurm", "perlmutter", {"tp": 4}, True),
        ("tp8.pbs", "pbs", "aurora", {"tp": 8}, False),
    ],
)
def test_golden_scripts(
    name: str, scheduler: str, profile: str, plan: dict[str, int], nsys: bool
) -> None:
    exp_id = name.removesuffix(f".{scheduler}").removesuffix(".nsys")
    job = JobScriptSpec(walltime="30m", account="m1234")
    rendered = render_profile_job(
        experiment(exp_id, **plan),
        DEMO / "experiments" / f"{exp_id}.yaml",
        scheduler,
        load_profile(profile),
        DEMO / "jobs",
        DEMO,
        job,
        nsys,
        PYTHON,
    )
    assert rendered.script_path == DEMO / "jobs" / name
    assert_golden(GOLDEN / name, rendered.script)
    done = subprocess.run(["bash", "-n"], input=rendered.script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_plan_larger_than_one_node_is_refused_before_it_queues() -> None:
    """profile run drives one node's engine: a two-node script would profile two copies."""
    perlmutter = load_profile("perlmutter")
    with pytest.raises(SpecError) as refused:
        render_profile_job(
            experiment("dense8", tp=4, pp=2),
            DEMO / "c.yaml",
            "slurm",
            perlmutter,
            DEMO,
            DEMO,
            hpcinfer=PYTHON,
        )
    text = str(refused.value)
    assert "experiment dense8" in text and "needs 8 devices" in text
    assert "make tp x pp x dp at most 4" in text
    four = render_profile_job(
        experiment("tp4", tp=4), DEMO / "c.yaml", "slurm", perlmutter, DEMO, DEMO
    )
    assert four.nodes == 1 and "#SBATCH --nodes=1" in four.script
    moe = render_profile_job(
        experiment("moe", tp=4, ep=4), DEMO / "c.yaml", "slurm", perlmutter, DEMO, DEMO
    )
    assert moe.nodes == 1  # EP is not multiplied in


def test_every_value_reaches_the_command_as_written(tmp_path: Path) -> None:
    """The script is run with a stand-in hpcinfer that records its arguments: a config path
    full of shell syntax arrives as one argument, and nothing in it runs."""
    odd = tmp_path / "runs $(touch pwned) `id` 'q' \"dq\" ; & |"
    odd.mkdir()
    config = odd / "cfg.yaml"
    save_experiment(experiment("odd"), config)
    recorder = tmp_path / "record.py"
    record = tmp_path / "argv.json"
    recorder.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    job = render_profile_job(
        experiment("odd"),
        config,
        "slurm",
        load_profile("perlmutter"),
        tmp_path / "jobs",
        odd,
        nsys=True,
        hpcinfer=[sys.executable, str(recorder)],
    )
    done = subprocess.run(["bash", "-c", job.script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(record.read_text()) == ["profile", "run", str(config), "--nsys"]
    assert not (tmp_path / "pwned").exists() and not (odd / "pwned").exists()


def test_a_path_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="control"):
        render_profile_job(
            experiment(),
            tmp_path / "a\nb.yaml",
            "slurm",
            load_profile("perlmutter"),
            tmp_path,
            tmp_path,
        )


def test_cli_writes_one_script_per_config_beside_it(tmp_path: Path, main_cli: InProcessCLI) -> None:
    ran = main_cli("profile", "grid", "--preset", "tp-scaling-llama-8b", "-o", str(tmp_path))
    assert ran.code == 0, ran.output
    configs = sorted(str(p) for p in tmp_path.glob("*.yaml"))
    ran = main_cli(
        "profile",
        "submit",
        *configs,
        "--scheduler",
        "pbs",
        "--profile",
        "polaris",
        "--account",
        "proj",
        "--json",
    )
    assert ran.code == 0, ran.output
    jobs = json.loads(ran.out)["jobs"]
    assert [Path(j["script"]).name for j in jobs] == [
        "E1.1_llama8b_tp1.pbs",
        "E1.2_llama8b_tp2.pbs",
        "E1.3_llama8b_tp4.pbs",
    ]
    for job, config in zip(jobs, configs, strict=True):
        script = Path(job["script"]).read_text()
        assert f"profile run {config}\n" in script
        assert "#PBS -A proj" in script
        assert (tmp_path / "logs" / job["experiment_id"]).is_dir()
        assert os.access(job["script"], os.X_OK)


def test_cli_names_a_bad_config(tmp_path: Path, main_cli: InProcessCLI) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment_id: x\nmodel: {name: m}\noutput_dir: x\nparallelism: {tp: 0}\n")
    ran = main_cli("profile", "submit", str(bad), "--scheduler", "slurm", "--profile", "polaris")
    assert ran.code == 2
    assert str(bad) in ran.err and "parallelism.tp" in ran.err
