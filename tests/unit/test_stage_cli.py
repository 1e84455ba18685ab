"""`hpcinfer stage` as users see it: the summary, what to pass to the run, errors, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import call_main
from tests.unit.test_stage_helpers import make_hf_cache, make_model_dir

_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "SLURM_", "PALS_", "MPI_", "HYDRA_")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's rank variables (not started by mpiexec)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    return env | extra


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def hpcinfer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Ran]:
    """Run the `hpcinfer` entry point in this process, as a shell would (argv, cwd, env)."""
    for name in list(os.environ):
        if name.startswith(_LAUNCHER_PREFIXES):
            monkeypatch.delenv(name)

    def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Ran:
        monkeypatch.chdir(cwd)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        ran = call_main(args, monkeypatch, capsys, width=None)
        return Ran(ran.code, ran.out, ran.err)

    return run


def test_summary_says_what_was_sent_and_exactly_what_to_run(
    tmp_path: Path, hpcinfer: Callable[..., Ran]
) -> None:
    make_model_dir(tmp_path / "models" / "tiny")
    proc = hpcinfer(["stage", "models/tiny", "--to", "scratch", "--chunk-mib", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "staged models/tiny to 1 copy on 1 node (1 rank)" in out
    assert "5 files + 1 link, 3.16 MB" in out
    assert " GB/s" in out
    assert out.rstrip().endswith(f"hpcinfer run INPUTS --model {tmp_path / 'scratch' / 'tiny'}")
    again = hpcinfer(["stage", "models/tiny", "--to", "scratch"], tmp_path)
    assert again.returncode == 0
    assert "already staged and verified" in again.stdout and "nothing sent" in again.stdout


def test_hf_id_summary_exports_the_cache_variables(
    tmp_path: Path, hpcinfer: Callable[..., Ran]
) -> None:
    make_hf_cache(tmp_path / "hf" / "hub", "org/tiny", make_model_dir(tmp_path / "plain"))
    env = {"HF_HOME": str(tmp_path / "hf")}
    proc = hpcinfer(["stage", "org/tiny", "--to", str(tmp_path / "node")], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    node = tmp_path / "node"
    assert f"export HF_HOME={node} HF_HUB_CACHE={node / 'hub'}\n" in proc.stdout
    assert "hpcinfer run INPUTS --model org/tiny" in proc.stdout


def test_json_summary_is_one_document_with_the_run_arguments(
    tmp_path: Path, hpcinfer: Callable[..., Ran]
) -> None:
    make_model_dir(tmp_path / "m")
    proc = hpcinfer(["stage", "m", "--to", "out", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "staged" and data["copies"] == 1 and data["ranks"] == 1
    assert data["bytes_sent"] == data["bytes"] > 0 and data["seconds"] > 0
    assert "gb_per_s" in data
    assert data["run"] == {"model": str(tmp_path / "out" / "m"), "env": {}}


def test_missing_model_is_exit_2_with_the_fix(tmp_path: Path, hpcinfer: Callable[..., Ran]) -> None:
    proc = hpcinfer(["stage", str(tmp_path / "nope"), "--to", "out"], tmp_path)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "no such directory" in proc.stderr
    env = {"HF_HOME": str(tmp_path / "hf")}
    proc = hpcinfer(["stage", "org/absent", "--to", "out"], tmp_path, env)
    assert proc.returncode == 2
    assert "huggingface-cli download org/absent" in proc.stderr


def test_bad_options_are_exit_2(tmp_path: Path, hpcinfer: Callable[..., Ran]) -> None:
    make_model_dir(tmp_path / "m")
    proc = hpcinfer(["stage", "m", "--to", "out/{local_rank}"], tmp_path)
    assert proc.returncode == 2 and "unknown placeholder" in proc.stderr
    proc = hpcinfer(["stage", "m", "--to", "out", "--chunk-mib", "0"], tmp_path)
    assert proc.returncode == 2 and "--chunk-mib 0" in proc.stderr
    (tmp_path / "file").write_text("x", encoding="utf-8")
    proc = hpcinfer(["stage", "m", "--to", "file/sub"], tmp_path)
    assert proc.returncode == 2 and "cannot write the staged copy" in proc.stderr


def test_help_and_a_local_stage_never_import_mpi(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "m")
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from hpcinfer.cli.main import app\n"
        "r = CliRunner().invoke(app, ['stage', '--help'])\n"
        "assert r.exit_code == 0 and '--chunk-mib' in r.output, r.output\n"
        "assert 'mpi4py' not in sys.modules, 'help imported mpi4py'\n"
        "r = CliRunner().invoke(app, ['stage', 'm', '--to', 'out'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'mpi4py' not in sys.modules, 'a local stage imported mpi4py'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
