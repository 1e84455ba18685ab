"""The CLI: spec building from file + inputs + flags + --set, and errors before any engine."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from hpcinfer.cli import main as cli_main
from hpcinfer.cli.flags import FLAGS
from hpcinfer.cli.main import app, run
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec
from tests.harness import InProcessCLI, call_main

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shared_flag_sets_a_real_spec_field() -> None:
    for name, flag in FLAGS.items():
        if flag.field is None:
            continue
        model: type[BaseModel] = JobSpec
        *parents, leaf = flag.field.split(".")
        for part in parents:
            annotation = model.model_fields[part].annotation
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
            model = annotation
        assert leaf in model.model_fields, (name, flag.field)


def test_run_takes_every_shared_flag_that_sets_a_spec_field_but_the_servers_and_jobs() -> None:
    params = set(inspect.signature(run).parameters)
    for name, flag in FLAGS.items():
        if flag.field and not flag.field.startswith(("serve.", "job.")):
            assert name in params, name


# -- in-process CLI (CliRunner) ---------------------------------------------------------------


def test_spec_schema_prints_json_schema() -> None:
    result = runner.invoke(app, ["spec", "--schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert {"model", "engine", "sampling", "inputs", "output", "workers"} <= set(
        schema["properties"]
    )


def test_spec_without_options_prints_the_defaults() -> None:
    result = runner.invoke(app, ["spec"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sampling"]["max_tokens"] == 256


def test_spec_check_good_file_prints_it_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", "sampling:\n  temperature: 0\n")
    result = runner.invoke(app, ["spec", "--check", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sampling"]["temperature"] == 0
    assert data["sampling"]["max_tokens"] == 256


def test_spec_check_bad_file_fails_naming_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "sampling:\n  temprature: 0\n")
    result = runner.invoke(app, ["spec", "--check", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, SpecError)
    assert str(path) in str(result.exception)
    assert "sampling.temprature" in str(result.exception)


def test_plan_aurora_tp8_json_shows_one_worker_and_idle_tiles() -> None:
    result = runner.invoke(app, ["plan", "--profile", "aurora", "--tp", "8", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["profile"] == "aurora"
    assert len(plan["rows"]) == 1
    assert len(plan["rows"][0]["devices"].split(",")) == 8
    assert len(plan["warnings"]) == 1
    warning = plan["warnings"][0]
    assert "4 devices" in warning
    idle = ["gpu4.tile0", "gpu4.tile1", "gpu5.tile0", "gpu5.tile1"]
    assert all(label in warning for label in idle)
    assert all(label not in plan["rows"][0]["devices"] for label in idle)


def test_plan_rejects_a_bad_placement() -> None:
    result = runner.invoke(app, ["plan", "--profile", "aurora", "--placement", "diagonal"])
    assert isinstance(result.exception, SpecError)
    assert "compact or scatter" in str(result.exception)


def test_run_help_lists_the_exit_codes() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes:" in text
    for phrase in (
        "0 all records ok",
        "3 finished, some records are error rows",
        "4 incomplete",
        "1 the run failed",
        "2 bad spec",
    ):
        assert phrase in text, phrase


# -- the real entry point -------------------------------------------------------------------
# One case runs `python -m hpcinfer` in a subprocess to check the real exit status, the
# absence of a traceback, and that no engine module is imported; it is started when the first
# test of this module runs so it overlaps the others. The other cases call main() in-process
# (the same error wrapping, without an interpreter start each).

ENGINE_MODULES = ("vllm", "torch", "transformers")
PY_M_HPCINFER = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('engine modules:', "
    f"[m for m in {ENGINE_MODULES!r} if m in sys.modules])); "
    "runpy.run_module('hpcinfer', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module", autouse=True)
def cli_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[subprocess.Popen[str]]:
    """`hpcinfer run p.txt --set sampling.temprature=0.5` in a fresh interpreter."""
    cwd = tmp_path_factory.mktemp("process")
    write(cwd / "p.txt", "hello\n")
    env = dict(os.environ)
    env["HPCINFER_CACHE"] = str(cwd / "cache")  # never the user's cache
    env["COLUMNS"] = "300"
    command = [sys.executable, "-c", PY_M_HPCINFER, "run", "p.txt"]
    command += ["--set", "sampling.temprature=0.5"]
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


class Main:
    """Calls hpcinfer.cli.main.main() as the console script does; returns (code, output)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.cwd = tmp_path
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HPCINFER_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(cli_main.err, "width", 300)  # no wrapping inside messages
        write(tmp_path / "p.txt", "hello\n")

    def __call__(self, *args: str) -> tuple[int, str]:
        ran = call_main(args, self.monkeypatch, self.capsys)
        return ran.code, ran.output


@pytest.fixture
def hpcinfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Main:
    return Main(tmp_path, monkeypatch, capsys)


def usage_error(result: tuple[int, str]) -> str:
    code, output = result
    assert code == 2, output
    assert "Traceback" not in output
    assert "error:" in output
    return " ".join(output.split())


def test_run_bad_placement_exits_2_naming_the_choices(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "--placement", "diagonal"))
    assert "workers.placement" in text and "'compact'" in text and "'scatter'" in text


def test_run_bad_launcher_and_schedule_exit_2_naming_the_choices(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "--launcher", "pbsdsh"))
    assert "workers.launcher" in text and "'mpi'" in text and "'srun'" in text
    text = usage_error(hpcinfer("run", "p.txt", "--schedule", "round-robin"))
    assert "workers.schedule" in text and "'static'" in text


def test_run_srun_launcher_outside_slurm_exits_2_with_the_fix(
    hpcinfer: Main, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("SLURM_", "PMI_", "OMPI_", "PALS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["hpcinfer", "run", "p.txt", "--launcher", "srun"])
    text = usage_error(hpcinfer("run", "p.txt", "--launcher", "srun"))
    assert "salloc" in text and "hpcinfer submit" in text


def test_run_out_of_range_value_exits_2_naming_it(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "--max-tokens", "0"))
    assert "sampling.max_tokens" in text and "(got 0)" in text


def test_run_bad_time_limit_exits_2(hpcinfer: Main) -> None:
    code, output = hpcinfer("run", "p.txt", "--time-limit", "soon")
    text = " ".join(output.split())
    assert code == 2 and "Traceback" not in output
    assert "--time-limit 'soon' is not a duration" in text and "1.5h" in text
    text = usage_error(hpcinfer("run", "p.txt", "--set", "time_limit=soon"))
    assert "time_limit" in text and "'soon'" in text


def test_run_unknown_set_field_exits_2(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "--set", "engine.tensor_paralel_size=2"))
    assert "engine.tensor_paralel_size: unknown field" in text
    assert "tensor_parallel_size" in text


def test_run_set_without_equals_exits_2(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "--set", "sampling.top_k"))
    assert "FIELD=VALUE" in text


def test_run_missing_input_exits_2_and_writes_nothing(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "p.txt", "gone.txt"))
    assert "'gone.txt' does not exist" in text
    assert not (hpcinfer.cwd / "hpcinfer-out").exists()


def test_run_invalid_yaml_exits_2_naming_the_file(hpcinfer: Main) -> None:
    write(hpcinfer.cwd / "bad.yaml", "sampling: {unclosed\n")
    text = usage_error(hpcinfer("run", "bad.yaml", "p.txt"))
    assert "bad.yaml" in text and "not valid YAML" in text


def test_run_yaml_list_exits_2(hpcinfer: Main) -> None:
    write(hpcinfer.cwd / "list.yaml", "- a\n- b\n")
    text = usage_error(hpcinfer("run", "list.yaml"))
    assert "list.yaml" in text and "mapping" in text


def test_run_missing_spec_file_exits_2(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run", "absent.yaml", "p.txt"))
    assert "absent.yaml does not exist" in text


def test_run_without_inputs_exits_2_with_a_hint(hpcinfer: Main) -> None:
    text = usage_error(hpcinfer("run"))
    assert "inputs.paths is empty" in text


def test_run_into_another_specs_output_exits_2_mentioning_restart(hpcinfer: Main) -> None:
    manifest = hpcinfer.cwd / "out" / "manifest.json"
    write(manifest, json.dumps({"fingerprint": "other", "identity": {"model": "earlier"}}))
    write(hpcinfer.cwd / "out" / "units" / "p.txt_1-1.jsonl", '{"id": "p.txt:1"}\n')
    text = usage_error(hpcinfer("run", "p.txt", "--out", "out"))
    assert "different spec" in text and "--restart" in text
    assert json.loads(manifest.read_text())["fingerprint"] == "other"  # untouched


@pytest.mark.parametrize("args", [["--frobnicate"], ["--max-tokens", "many"]])
def test_run_bad_flag_is_a_usage_error_without_traceback(hpcinfer: Main, args: list[str]) -> None:
    code, output = hpcinfer("run", "p.txt", *args)
    assert code == 2, output
    assert args[0] in output


@pytest.mark.parametrize("pattern", ["prompts/[abc]*.in", "data/[/x]*.txt"])
def test_error_messages_with_brackets_are_printed_verbatim(hpcinfer: Main, pattern: str) -> None:
    text = usage_error(hpcinfer("run", pattern))
    assert pattern in text


def test_process_unknown_set_field_exits_2_with_message_and_no_traceback(
    cli_process: subprocess.Popen[str],
) -> None:
    try:
        output, _ = cli_process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        cli_process.kill()
        output, _ = cli_process.communicate()
    text = " ".join(output.split())
    assert cli_process.returncode == 2, output
    assert "error:" in text
    assert "sampling.temprature: unknown field" in text
    assert "temperature" in text
    assert "Traceback" not in output
    assert "engine modules: []" in text  # the CLI and the job module import no engine


def test_version_flag_prints_the_version(main_cli: InProcessCLI) -> None:
    import hpcinfer

    ran = main_cli("--version")
    assert ran.code == 0
    assert ran.out.strip() == f"hpcinfer {hpcinfer.__version__}"


def test_run_save_spec_writes_the_job_and_runs_nothing(hpcinfer: Main) -> None:
    code, output = hpcinfer("run", "p.txt", "--max-tokens", "7", "--save-spec", "job.yaml")
    assert code == 0, output
    assert "hpcinfer run job.yaml" in output
    saved = (hpcinfer.cwd / "job.yaml").read_text()
    assert "max_tokens: 7" in saved and "p.txt" in saved
    assert not (hpcinfer.cwd / "hpcinfer-out").exists(), "nothing ran"
