"""The spec's `job:` section: defaults, validation messages, secrets, walltime, site defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcinfer.cluster.hardware import HardwareProfile, load_profile
from hpcinfer.errors import HardwareError, SpecError
from hpcinfer.job_script_spec import JobScriptSpec
from hpcinfer.spec import JobSpec, build_spec
from hpcinfer.submit.environment import merge_environment
from hpcinfer.submit.walltime import pbs_walltime, slurm_time


def job(**fields: Any) -> JobScriptSpec:
    return build_spec({"job": fields}, "spec.yaml").job


def test_defaults() -> None:
    spec = JobSpec()
    assert spec.job.nodes == 1 and spec.job.resubmit == 0 and spec.job.scheduler is None
    assert spec.job.pass_env == ["HF_TOKEN", "HF_HOME", "HPCINFER_CACHE"]


def test_job_section_is_not_part_of_the_run_identity() -> None:
    plain = build_spec({"inputs": {"paths": ["a.txt"]}}, "a")
    with_job = build_spec({"inputs": {"paths": ["a.txt"]}, "job": {"nodes": 8}}, "b")
    assert plain.identity() == with_job.identity()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nodes": 0}, "job.nodes: Input should be greater than or equal to 1"),
        ({"walltime": "90"}, "bare numbers are refused"),
        ({"walltime": "soon"}, "is not a duration"),
        ({"account": "my proj"}, "cannot go into a scheduler directive"),
        ({"queue": "debug\n#PBS -A other"}, "cannot go into a scheduler directive"),
        ({"constraint": "gpu; rm"}, "cannot go into a scheduler directive"),
        ({"name": "1job"}, "start with a letter"),
        ({"filesystems": ["home", "fl are"]}, "file system 'fl are'"),
        ({"cpu_bind": "depth; rm"}, "cpu_bind"),
        ({"cpu_bind": []}, "empty list"),
        ({"venv": "a", "conda_env": "b"}, "venv or conda_env, not both"),
        ({"queue": "debug", "partition": "gpu"}, "differ"),
        ({"env": {"1BAD": "x"}}, "variable name '1BAD'"),
        ({"pass_env": ["A-B"]}, "pass_env name 'A-B'"),
        ({"extra_directives": ["mail me"]}, "starting with '-'"),
        ({"extra_directives": ["-l a\nrm -rf /"]}, "starting with '-'"),
        ({"setup": "echo a\necho b"}, None),  # a YAML block string: one entry per line
        ({"nodse": 2}, "unknown field; valid fields here"),
    ],
)
def test_bad_values_fail_with_the_field_and_the_fix(
    fields: dict[str, Any], message: str | None
) -> None:
    if message is None:
        assert job(**fields).setup == ["echo a", "echo b"]
        return
    with pytest.raises(SpecError, match=message):
        job(**fields)


@pytest.mark.parametrize(
    "name", ["HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]
)
def test_secrets_in_env_are_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        job(env={name: "s3cr3t-value"})
    message = str(caught.value)
    assert f"job.env sets {name}" in message and "Export" in message and "pass_env" in message
    assert "s3cr3t-value" not in message


def test_secret_literals_in_setup_lines_are_refused() -> None:
    with pytest.raises(SpecError, match=r"job\.setup entry 2 sets HF_TOKEN") as caught:
        job(setup=["module list", "export HF_TOKEN=hf_abcdef"])
    assert "hf_abcdef" not in str(caught.value)
    with pytest.raises(SpecError, match="sets api-key"):
        job(setup=["mytool --api-key=abc"])
    with pytest.raises(SpecError, match="entry 1 sets MY_SECRET"):
        job(setup=["if true; then\n  export MY_SECRET='x'\nfi"])
    # Reading the secret at run time is fine: the script holds no secret then.
    assert job(setup=['export HF_TOKEN="$(cat ~/.hf_token)"', "export KEYS_DIR=$HOME/k"]).setup


def test_walltime_spellings() -> None:
    assert pbs_walltime(30 * 3600 + 61) == "30:01:01"
    assert slurm_time(3599) == "00:59:59"
    assert slurm_time(30 * 3600 + 61) == "1-06:01:01"


def test_aurora_profile_carries_the_site_environment() -> None:
    site = load_profile("aurora").job_env
    assert site is not None and site.scheduler == "pbs"
    assert site.modules == ["frameworks"]
    assert site.proxy == "http://proxy.alcf.anl.gov:3128"
    assert site.env["ZE_FLAT_DEVICE_HIERARCHY"] == "COMPOSITE"  # gpu.tile masks need it
    assert load_profile("cpu").job_env is None


def test_profile_job_env_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("vendor: cpu\njob_env:\n  scheduler: lsf\n")
    with pytest.raises(HardwareError, match=r"job_env\.scheduler"):
        load_profile(str(path))


def test_profile_secrets_are_refused_too() -> None:
    profile = HardwareProfile.model_validate(
        {"name": "site", "vendor": "cpu", "job_env": {"env": {"SITE_TOKEN": "x"}}}
    )
    with pytest.raises(SpecError, match=r"hardware profile 'site' job_env\.env sets SITE_TOKEN"):
        merge_environment(JobScriptSpec(), profile)


def test_merge_adds_modules_and_setup_and_overrides_values() -> None:
    profile = load_profile("aurora")
    merged = merge_environment(
        job(modules=["frameworks", "mine"], setup=["echo hi"], env={"A": "1"}), profile
    )
    assert merged.modules == ["frameworks", "mine"]
    assert merged.setup == ["echo hi"]
    assert merged.env == {"ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE", "A": "1"}
    assert merged.proxy == "http://proxy.alcf.anl.gov:3128"
