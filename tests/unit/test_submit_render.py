"""Rendered job scripts: golden files per scheduler, bash syntax, directives, launcher line.

The golden files are the review surface for script changes. Regenerate them only on
purpose: HPCINFER_UPDATE_GOLDEN=1 pytest tests/unit/test_submit_render.py, then read the diff.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec, build_spec
from hpcinfer.submit.prepare import PreparedJob, choose_scheduler, prepare_job
from hpcinfer.submit.scheduler import SchedulerError
from tests.conftest import assert_golden

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "submit"
WORKDIR = Path("/lus/flare/projects/demo/runs")
PYTHON = ["/opt/hpcinfer/venv/bin/python", "-m", "hpcinfer"]


def no_programs(_: str) -> str | None:
    return None


def spec(data: dict[str, Any]) -> JobSpec:
    return build_spec(data, "test spec")


def prepare(data: dict[str, Any], scheduler: str | None = None, cwd: Path = WORKDIR) -> PreparedJob:
    return prepare_job(spec(data), cwd, scheduler, PYTHON, no_programs)  # type: ignore[arg-type]


AURORA_SPEC: dict[str, Any] = {
    "model": "/lus/flare/projects/demo/models/opt-125m",
    "inputs": {"paths": ["prompts/*.in"]},
    "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 128},
    "output": {"dir": "out"},
    "workers": {"profile": "aurora"},
    "job": {
        "nodes": 4,
        "walltime": "00:10:00",
        "account": "candle_aesp_CNDA",
        "queue": "debug-scaling",
        "filesystems": "flare:home",
        "cpu_bind": ["1-8", "9-16", "17-24"],
        "ranks_per_node": 3,
        "conda_env": "/lus/flare/projects/demo/conda_envs/vllm-20250520",
        "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        "setup": ["ulimit -c unlimited"],
        "resubmit": 2,
        "extra_directives": ["-m n"],
    },
}

PERLMUTTER_SPEC: dict[str, Any] = {
    "inputs": {"paths": ["/global/cfs/demo/prompts.jsonl"], "prompt_field": "text"},
    "output": {"dir": "/pscratch/sd/d/demo/out"},
    "workers": {"profile": "perlmutter", "count": 2},
    "engine": {"tensor_parallel_size": 2},
    "job": {
        "nodes": 2,
        "walltime": "1d6h",
        "account": "m1234",
        "qos": "regular",
        "constraint": "gpu&hbm80g",
        "proxy": "http://proxy.example.org:3128",
        "modules": ["cudatoolkit/12.4"],
        "resubmit": 1,
    },
}


@pytest.mark.parametrize(
    ("name", "data", "scheduler"),
    [("aurora.pbs", AURORA_SPEC, "pbs"), ("perlmutter.slurm", PERLMUTTER_SPEC, "slurm")],
)
def test_golden_scripts(name: str, data: dict[str, Any], scheduler: str) -> None:
    prepared = prepare(data, scheduler)
    assert_golden(GOLDEN / name, prepared.script)


def assert_bash_syntax(script: str, path: Path) -> None:
    """`script`, written to `path`, passes `bash -n` (bash's message on failure)."""
    path.write_text(script, encoding="utf-8")
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("data", "scheduler"), [(AURORA_SPEC, "pbs"), (PERLMUTTER_SPEC, "slurm")])
def test_scripts_pass_bash_syntax_check(
    data: dict[str, Any], scheduler: str, tmp_path: Path
) -> None:
    assert_bash_syntax(prepare(data, scheduler).script, tmp_path / "job.sh")


def _launch_line(script: str) -> list[str]:
    line = next(ln for ln in script.splitlines() if ln.startswith(("mpiexec ", "srun ")))
    return shlex.split(line)


def test_pbs_launch_line_uses_pals_mpiexec_on_the_saved_spec() -> None:
    prepared = prepare(AURORA_SPEC, "pbs")
    assert _launch_line(prepared.script) == [
        "mpiexec", "-n", "12", "-ppn", "3", "--cpu-bind", "list:1-8:9-16:17-24",
        "hpcinfer", "run", str(WORKDIR / "out" / "job" / "spec.yaml"),
        "--launcher", "mpi",
    ]  # fmt: skip


def test_slurm_launch_line_uses_srun_and_this_python_without_activation() -> None:
    prepared = prepare(PERLMUTTER_SPEC, "slurm")
    assert _launch_line(prepared.script) == [
        "srun", "--nodes", "2", "--ntasks-per-node", "2", *PYTHON,
        "run", "/pscratch/sd/d/demo/out/job/spec.yaml", "--launcher", "srun",
    ]  # fmt: skip


def test_a_one_shot_fleet_runs_once_and_needs_a_reachable_host() -> None:
    fleet = dict(AURORA_SPEC, engine={"kind": "vllm-server"})
    with pytest.raises(SpecError, match=r"--host 0\.0\.0\.0"):
        prepare(fleet, "pbs")  # 4 nodes of servers bound to 127.0.0.1: unreachable
    fleet["serve"] = {"host": "0.0.0.0", "api_key_env": "FLEET_KEY"}
    prepared = prepare(fleet, "pbs")
    line = next(ln for ln in prepared.script.splitlines() if "--launcher mpi" in ln)
    spec_file = str(WORKDIR / "out" / "job" / "spec.yaml")
    # no mpiexec around it: it starts one serve rank per node itself
    assert shlex.split(line) == ["hpcinfer", "run", spec_file, "--launcher", "mpi"]


def test_directives_per_scheduler() -> None:
    pbs = prepare(AURORA_SPEC, "pbs").script.splitlines()
    for line in (
        "#PBS -l select=4",
        "#PBS -l place=scatter",
        "#PBS -l walltime=00:10:00",
        "#PBS -A candle_aesp_CNDA",
        "#PBS -q debug-scaling",
        "#PBS -l filesystems=flare:home",
        "#PBS -j oe",
        f"#PBS -o {WORKDIR}/out/job/pbs.out",
        "#PBS -m n",
    ):
        assert line in pbs
    slurm = prepare(PERLMUTTER_SPEC, "slurm").script.splitlines()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-node=4",  # the profile's GPUs
        "#SBATCH --time=1-06:00:00",
        "#SBATCH --account=m1234",
        "#SBATCH --qos=regular",
        "#SBATCH --constraint=gpu&hbm80g",
        "#SBATCH --output=/pscratch/sd/d/demo/out/job/slurm-%j.out",
    ):
        assert line in slurm


def test_profile_site_environment_comes_before_the_specs() -> None:
    script = prepare(AURORA_SPEC, "pbs").script
    order = [
        "module load frameworks ",
        "conda activate /lus/flare/projects/demo/conda_envs/vllm-20250520 ",
        "export https_proxy=http://proxy.alcf.anl.gov:3128",
        "export ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE",
        "export VLLM_LOGGING_LEVEL=INFO",
        "ulimit -c unlimited",
        "mpiexec ",
    ]
    positions = [script.index(text) for text in order]
    assert positions == sorted(positions)


def test_spec_overrides_profile_values() -> None:
    data = {**AURORA_SPEC, "job": {**AURORA_SPEC["job"], "proxy": "http://mine:1",
                                   "env": {"ZE_FLAT_DEVICE_HIERARCHY": "FLAT"}}}  # fmt: skip
    script = prepare(data, "pbs").script
    assert "export http_proxy=http://mine:1" in script
    assert "ZE_FLAT_DEVICE_HIERARCHY=FLAT" in script
    assert "COMPOSITE" not in script and "proxy.alcf" not in script


def test_spec_copy_has_absolute_paths_and_the_chosen_scheduler() -> None:
    prepared = prepare(AURORA_SPEC, "pbs")
    copy = yaml.safe_load(prepared.spec_text)
    assert copy["inputs"]["paths"] == [f"{WORKDIR}/prompts/*.in"]
    assert copy["output"]["dir"] == f"{WORKDIR}/out"
    assert copy["job"]["scheduler"] == "pbs"
    assert build_spec(copy, "copy").identity() == prepared.spec.identity()
    assert prepared.files.script == WORKDIR / "out" / "job" / "job.pbs"


def test_ranks_per_node_defaults_to_one_per_device_group() -> None:
    data = {**AURORA_SPEC, "job": {k: v for k, v in AURORA_SPEC["job"].items()
                                   if k not in ("ranks_per_node", "cpu_bind")}}  # fmt: skip
    assert "mpiexec -n 48 -ppn 12 " in prepare(data, "pbs").script  # 12 tiles per node
    data["engine"] = {"tensor_parallel_size": 4}
    assert "mpiexec -n 12 -ppn 3 " in prepare(data, "pbs").script


def test_venv_activation_then_plain_hpcinfer() -> None:
    data = {**PERLMUTTER_SPEC, "job": {**PERLMUTTER_SPEC["job"], "venv": "envs/vllm"}}
    script = prepare(data, "slurm").script
    assert f". {WORKDIR}/envs/vllm/bin/activate " in script
    assert _launch_line(script)[5:7] == ["hpcinfer", "run"]


@pytest.mark.parametrize(
    ("job", "scheduler", "message"),
    [
        ({"partition": "gpu"}, "pbs", "job.partition is not a PBS option"),
        ({"qos": "regular"}, "pbs", "job.qos is not a PBS option"),
        ({"gpus_per_node": 4}, "pbs", "job.gpus_per_node is not a PBS option"),
        ({"filesystems": ["home"]}, "slurm", "job.filesystems is not a SLURM option"),
        ({"cpu_bind": ["0-7", "8-15"]}, "slurm", "PALS syntax"),
    ],
)
def test_options_the_scheduler_does_not_take_are_refused(
    job: dict[str, Any], scheduler: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        prepare({"workers": {"profile": "polaris"}, "job": job}, scheduler)


@pytest.mark.parametrize("out", ["/lus/a b/out", "/lus/o'q/out", "/lus/$(touch x)/out",
                                 "/lus/x;rm/out", "/lus/host:dir/out", "/lus/50%/out"])  # fmt: skip
def test_output_dirs_the_directive_parsers_would_misread_are_refused(out: str) -> None:
    with pytest.raises(SpecError, match="cannot go into #PBS/#SBATCH lines"):
        prepare({"workers": {"profile": "polaris"}, "output": {"dir": out}}, "pbs")


def test_scheduler_choice_order() -> None:
    polaris = prepare({"workers": {"profile": "polaris"}})
    assert polaris.files.scheduler == "pbs"  # the profile's scheduler
    job_spec = spec({"workers": {"profile": "polaris"}, "job": {"scheduler": "slurm"}})
    assert choose_scheduler(None, job_spec, polaris.profile, no_programs).name == "slurm"
    assert choose_scheduler("pbs", job_spec, polaris.profile, no_programs).name == "pbs"
    arc = prepare({"workers": {"profile": "arc-a770"}}, "slurm")
    with pytest.raises(SchedulerError, match="neither sbatch"):
        choose_scheduler(None, arc.spec.model_copy(update={"job": spec({}).job}), arc.profile,
                         no_programs)  # fmt: skip


def test_stage_to_stages_the_model_then_runs_on_the_staged_copy(tmp_path: Path) -> None:
    data = {**AURORA_SPEC, "job": {**AURORA_SPEC["job"], "stage_to": "/local/scratch/models"}}
    script = prepare(data, "pbs").script
    lines = script.splitlines()
    stage = next(i for i, ln in enumerate(lines) if " stage " in ln)
    run = next(i for i, ln in enumerate(lines) if ln.startswith("mpiexec ") and " run " in ln)
    assert stage < run
    assert shlex.split(lines[stage].split(" || ")[0]) == [
        "mpiexec", "-n", "4", "-ppn", "1", "hpcinfer", "stage",
        "/lus/flare/projects/demo/models/opt-125m", "--to", "/local/scratch/models",
    ]  # fmt: skip
    assert "hpcinfer_fail" in lines[stage]  # a failed stage stops the job before the run
    # The run reads the staged copy, not the shared one (the Aurora scripts read the wrong one).
    assert shlex.split(lines[run])[-2:] == ["--model", "/local/scratch/models/opt-125m"]
    (tmp_path / "job.pbs").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.pbs")]).returncode == 0


def test_stage_to_an_hf_id_exports_hf_home() -> None:
    data = {**PERLMUTTER_SPEC, "model": "org/model"}
    data["job"] = {**PERLMUTTER_SPEC["job"], "stage_to": "/tmp/hf stage"}
    script = prepare(data, "slurm").script
    assert "export HF_HOME='/tmp/hf stage'" in script
    assert "export HF_HUB_CACHE='/tmp/hf stage/hub'" in script


def test_stage_to_without_a_model_is_refused() -> None:
    data = {**PERLMUTTER_SPEC, "job": {**PERLMUTTER_SPEC["job"], "stage_to": "/tmp/x"}}
    data.pop("model", None)
    with pytest.raises(SpecError, match="stage_to"):
        prepare(data, "slurm")


def test_the_scheduler_choice_says_why() -> None:
    plain = spec({"workers": {"profile": "arc-a770"}})
    profile = prepare({"workers": {"profile": "polaris"}}).profile
    on_path = choose_scheduler(None, plain, profile.model_copy(update={"job_env": None}),
                               lambda p: "/usr/bin/sbatch" if p == "sbatch" else None)  # fmt: skip
    assert on_path.describe() == "Slurm, because sbatch is on PATH"
    assert "hardware profile polaris" in choose_scheduler(None, plain, profile).reason
    by_flag = choose_scheduler("pbs", plain, profile)
    assert by_flag.describe() == "PBS, because --scheduler pbs was given"
    in_spec = spec({"job": {"scheduler": "slurm"}})
    assert choose_scheduler(None, in_spec, profile).reason == "the spec's job.scheduler says so"


def test_a_pbs_only_option_under_slurm_is_refused_saying_why_slurm() -> None:
    with pytest.raises(SpecError) as caught:
        prepare({"workers": {"profile": "polaris"}, "job": {"filesystems": ["flare"]}}, "slurm")
    message = str(caught.value)
    assert "--scheduler pbs" in message
    assert "the job is for Slurm, because --scheduler slurm was given" in message


@pytest.mark.parametrize(
    ("line", "scheduler", "owner"),
    [("-l walltime=1:00:00", "slurm", "pbs"), ("-lselect=2", "slurm", "pbs"),
     ("--mail-type=END", "pbs", "slurm")],
)  # fmt: skip
def test_extra_directives_of_the_other_scheduler_are_refused_naming_it(
    line: str, scheduler: str, owner: str
) -> None:
    data = {"workers": {"profile": "polaris"}, "job": {"extra_directives": [line]}}
    with pytest.raises(SpecError, match=f"--scheduler {owner}"):
        prepare(data, scheduler)


def test_extra_directives_of_the_chosen_scheduler_are_written() -> None:
    data = {"workers": {"profile": "polaris"}, "job": {"extra_directives": ["-l debug=true"]}}
    assert "#PBS -l debug=true" in prepare(data, "pbs").script
    data = {"workers": {"profile": "polaris"}, "job": {"extra_directives": ["--mail-type=END"]}}
    assert "#SBATCH --mail-type=END" in prepare(data, "slurm").script
