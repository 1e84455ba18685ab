"""One CLI convention: every command that runs work takes the shared flags the same way.

A table of commands x shared flags (spec file, inputs, -o, --model, --quiet, --json and
durations such as 1.5h / 01:30:00): each is accepted and means the same thing. Each command is
called in process up to its one library entry point, which is replaced by a stand-in that
records what it was given (the JobSpec, the settings) and stops there: no engine starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.cli.main import app
from tests.harness import InProcessCLI


class Reached(Exception):
    """Raised by the stand-in entry point, carrying what the command passed it."""

    def __init__(self, *args: Any) -> None:
        super().__init__("reached the library entry point")
        self.given = args


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    entry: str  # module:function the command calls (replaced by the stand-in)
    spec: Callable[[tuple[Any, ...]], Any] | None = None  # the JobSpec it built
    out: Callable[[tuple[Any, ...], Path], Path] | None = None  # its output directory
    model: Callable[[tuple[Any, ...]], Any] | None = None


def _spec0(given: tuple[Any, ...]) -> Any:
    return given[0]


def _settings_spec(given: tuple[Any, ...]) -> Any:
    return given[0].spec


def _spec_out(given: tuple[Any, ...], cwd: Path) -> Path:
    return cwd / given[0].output.dir


COMMANDS = {
    "run": Command(("run",), "hpcinfer.run.job:run_job", _spec0, _spec_out),
    "submit": Command(
        ("submit", "--scheduler", "slurm"), "hpcinfer.submit.prepare:prepare_job", _spec0, _spec_out
    ),
    "serve": Command(("serve",), "hpcinfer.serve.node:serve_node", _spec0),
    "bench offline": Command(
        ("bench", "offline"),
        "hpcinfer.bench.offline:run_offline",
        _settings_spec,
        lambda given, cwd: given[0].out_dir,
    ),
    "bench fom": Command(
        ("bench", "fom"),
        "hpcinfer.bench.fom_bench:run_fom",
        _settings_spec,
        lambda given, cwd: given[0].out_dir,
    ),
    "bench serve": Command(
        ("bench", "serve", "--url", "http://127.0.0.1:9"),
        "hpcinfer.bench.serve_bench:run_serve_bench",
        out=lambda given, cwd: given[0].out_dir,
        model=lambda given: given[0].model,
    ),
    "report": Command(
        ("report", "results"),
        "hpcinfer.report:write_report",
        out=lambda given, cwd: cwd / given[1].parent,
    ),
}
WITH_SPEC = [name for name, c in COMMANDS.items() if c.spec is not None]
WITH_INPUTS = ["run", "submit"]
WITH_OUT = [name for name, c in COMMANDS.items() if c.out is not None]
WITH_MODEL = [name for name, c in COMMANDS.items() if c.spec is not None or c.model]
EVERY = [
    ("run",), ("submit",), ("status", "1"), ("cancel", "1"), ("serve",), ("endpoints",),
    ("bench", "offline"), ("bench", "fom"), ("bench", "serve"), ("report", "x"), ("plan",),
    ("spec",), ("stage", "m", "--to", "/tmp"),
]  # fmt: skip


@pytest.fixture()
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("hello\n")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.yaml").write_text(
        "model: ./weights\nengine:\n  dtype: float16\ninputs:\n  paths: [p.txt]\n"
        "workers:\n  profile: polaris\n"
    )
    return tmp_path


def call(name: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, ...]:
    """Run `hpcinfer <name> <args>` in process up to its library call; what it passed."""
    command = COMMANDS[name]
    module, function = command.entry.split(":")

    def reached(*given: Any, **keywords: Any) -> Any:
        raise Reached(*given, *keywords.values())

    # The module object itself, not the dotted path: `hpcinfer.run` is also the API function
    # `hpcinfer.run`, which a dotted lookup finds until something imports the subpackage.
    monkeypatch.setattr(importlib.import_module(module), function, reached)
    with pytest.raises(Reached) as info:
        app([*command.argv, *args], standalone_mode=False)
    return info.value.given


@pytest.mark.parametrize("name", WITH_SPEC)
def test_a_spec_file_is_read_with_paths_from_its_folder(
    name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = COMMANDS[name].spec
    assert spec is not None
    built = spec(call(name, monkeypatch, "jobs/job.yaml"))
    assert built.model == str((cwd / "jobs" / "weights").resolve())
    assert built.engine.dtype == "float16"


@pytest.mark.parametrize("name", WITH_INPUTS)
def test_inputs_follow_the_spec_file_and_replace_its_own(
    name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = COMMANDS[name].spec
    assert spec is not None
    built = spec(call(name, monkeypatch, "jobs/job.yaml", "prompts.txt", "more/"))
    assert built.inputs.paths == ["prompts.txt", "more/"]
    assert built.engine.dtype == "float16"


@pytest.mark.parametrize("name", WITH_OUT)
@pytest.mark.parametrize("spelling", ["-o", "--out"])
def test_out_is_the_output_directory(
    name: str, spelling: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = COMMANDS[name].out
    assert out is not None
    given = (
        call(name, monkeypatch, "prompts.txt", spelling, "results-dir")
        if (name in WITH_INPUTS)
        else call(name, monkeypatch, spelling, "results-dir")
    )
    assert out(given, cwd) == cwd / "results-dir"


@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_names_the_model(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = COMMANDS[name]
    given = (
        call(name, monkeypatch, "prompts.txt", "--model", "org/m")
        if (name in WITH_INPUTS)
        else call(name, monkeypatch, "--model", "org/m")
    )
    chosen = command.spec(given).model if command.spec else command.model(given)  # type: ignore[misc]
    assert chosen == "org/m"


def test_bench_serve_reads_a_spec_file_and_inputs_as_run_does(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench serve [SPEC.yaml] [INPUT...]`: the spec's model (a path from its folder) and
    inputs, replaced by inputs named after it; --set wins over both."""
    options = call("bench serve", monkeypatch, "jobs/job.yaml")[0]
    assert options.model == str((cwd / "jobs" / "weights").resolve())
    assert options.inputs == (str(cwd / "jobs" / "p.txt"),)
    options = call("bench serve", monkeypatch, "jobs/job.yaml", "prompts.txt", "more/")[0]
    assert options.inputs == ("prompts.txt", "more/")
    options = call("bench serve", monkeypatch, "prompts.txt", "--set", "model=org/x")[0]
    assert options.model == "org/x" and options.inputs == ("prompts.txt",)


SAMPLING_OF: dict[str, Callable[[tuple[Any, ...]], dict[str, Any]]] = {
    "run": lambda given: given[0].sampling.model_dump(),
    "submit": lambda given: given[0].sampling.model_dump(),
    "bench serve": lambda given: {
        "temperature": given[0].temperature,
        "top_p": given[0].top_p,
        "top_k": given[0].top_k,
        "seed": given[0].seed,
        "stop": list(given[0].stop),
        "ignore_eos": given[0].ignore_eos,
    },
}
"""What each command that samples received, by JobSpec sampling field."""
SAMPLING_FLAGS = [
    (("--temperature", "0.7"), "temperature", 0.7),
    (("--top-p", "0.9"), "top_p", 0.9),
    (("--top-k", "5"), "top_k", 5),
    (("--seed", "7"), "seed", 7),
    (("--stop", "END", "--stop", "\n\n"), "stop", ["END", "\n\n"]),
    (("--ignore-eos",), "ignore_eos", True),
    (("--no-ignore-eos",), "ignore_eos", False),
]


@pytest.mark.parametrize("name", list(SAMPLING_OF))
@pytest.mark.parametrize(("argv", "field", "value"), SAMPLING_FLAGS, ids=lambda v: str(v))
def test_every_sampling_flag_means_the_same_on_every_command(
    name: str,
    argv: tuple[str, ...],
    field: str,
    value: Any,
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shared sampling flags set the same sampling field wherever they are taken."""
    extra = ("prompts.txt",) if name in WITH_INPUTS else ()
    assert SAMPLING_OF[name](call(name, monkeypatch, *extra, *argv))[field] == value


def test_bench_serve_seeds_sampling_with_seed_and_its_prompts_with_dataset_seed(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = call("bench serve", monkeypatch, "--seed", "7")[0]
    assert (options.seed, options.dataset_seed) == (7, 0)
    options = call("bench serve", monkeypatch, "--dataset-seed", "3")[0]
    assert (options.seed, options.dataset_seed) == (None, 3)


def test_bench_serve_is_greedy_with_exact_lengths_unless_told(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load test's own defaults (temperature 0, ignore_eos), which a flag, the spec file
    or --set changes; top_p 1 (the default) is not sent."""
    options = call("bench serve", monkeypatch)[0]
    assert (options.temperature, options.ignore_eos, options.top_p) == (0.0, True, None)
    assert options.seed is None and options.stop == ()
    (cwd / "greedy.yaml").write_text("sampling:\n  temperature: 0.5\n  ignore_eos: false\n")
    options = call("bench serve", monkeypatch, "greedy.yaml")[0]
    assert (options.temperature, options.ignore_eos) == (0.5, False)
    options = call("bench serve", monkeypatch, "--set", "sampling.ignore_eos=false")[0]
    assert (options.temperature, options.ignore_eos) == (0.0, False)


@pytest.mark.parametrize("text", ["1.5h", "01:30:00", "90m", "5400s", "0-01:30:00"])
@pytest.mark.parametrize("name", ["run", "submit", "serve"])
def test_time_limit_takes_every_duration_form(
    name: str, text: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = COMMANDS[name].spec
    assert spec is not None
    extra = ("prompts.txt",) if name in WITH_INPUTS else ()
    built = spec(call(name, monkeypatch, *extra, "--time-limit", text))
    assert built.time_limit_seconds() == 5400


@pytest.mark.parametrize("text", ["1.5h", "01:30:00", "0-01:30:00"])
def test_every_other_time_flag_takes_the_same_forms(
    text: str, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = call("submit", monkeypatch, "prompts.txt", "--walltime", text)[0].job
    assert job.walltime_seconds() == 5400
    serve = call("serve", monkeypatch, "--ready-timeout", text)[0].serve
    assert serve.ready_timeout_s == 5400
    assert call("bench serve", monkeypatch, "--timeout", text)[0].timeout_s == 5400


@pytest.mark.parametrize("name", ["run", "submit", "serve"])
def test_a_bad_duration_is_refused_naming_the_flag_and_the_forms(
    name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("prompts.txt",) if name in WITH_INPUTS else ()
    hpcinfer = InProcessCLI(monkeypatch, capsys)
    ran = hpcinfer(*COMMANDS[name].argv, *extra, "--time-limit", "soon")
    text = " ".join(ran.err.split())
    assert ran.code == 2 and "Traceback" not in text
    assert "--time-limit 'soon' is not a duration" in text and "1.5h" in text


@pytest.mark.parametrize("argv", EVERY, ids=" ".join)
@pytest.mark.parametrize("flag", ["--quiet", "-q", "--json"])
def test_every_command_takes_quiet_and_json(
    argv: tuple[str, ...],
    flag: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran = InProcessCLI(monkeypatch, capsys)(*argv, flag, "--help")
    assert ran.code == 0, ran.output
    assert "--quiet" in ran.out and "--json" in ran.out


def _feed_hooks(given: tuple[Any, ...]) -> None:
    """Play the library's part: report through every hook the command handed over (progress
    lines, notes), as a real run would."""
    for value in given:
        if callable(value) and not isinstance(value, type):
            value("loading the model")
        note = getattr(value, "note", None)
        if callable(note):
            note("a note from the library")
        on_note = getattr(value, "on_note", None)
        if callable(on_note):
            on_note("retrying 2 failed records of 7; 5 ok kept")


QUIET_REACHES: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "run": lambda given: given[1].quiet and given[1].on_note is None,
    "serve": lambda given: given[1].quiet and given[1].on_ready is None,
    "bench serve": lambda given: given[2].quiet,
}
JSON_REACHES: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "run": lambda given: given[1].quiet and given[1].on_note is None,
    "serve": lambda given: given[1].on_ready is not None,  # the fleet document, as JSON
    "bench serve": lambda given: not given[2].tables,
}


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("flag", ["--quiet", "-q", "--json"])
def test_quiet_and_json_reach_the_library_and_silence_the_cli(
    name: str,
    flag: str,
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Up to (and through the hooks of) the library call, the CLI prints nothing with --quiet
    and nothing on stdout with --json (stdout is left to the one JSON document)."""
    extra = ("prompts.txt",) if name in WITH_INPUTS else ()
    capsys.readouterr()
    given = call(name, monkeypatch, *extra, flag)
    _feed_hooks(given)
    out, err = capsys.readouterr()
    assert out == "", out
    if flag != "--json":
        assert err == "", err
    reaches = (JSON_REACHES if flag == "--json" else QUIET_REACHES).get(name)
    assert reaches is None or reaches(given), given


def test_the_registry_is_endpoints_everywhere(capsys: Any) -> None:
    for argv in (("run",), ("submit",), ("serve",), ("endpoints",), ("bench", "serve")):
        with pytest.raises(SystemExit):
            app([*argv, "--help"])
        help_text = capsys.readouterr().out
        assert "--endpoints" in help_text and "--registry" not in help_text, argv
        assert "--api-key-env" in help_text, argv


def test_serve_takes_the_engine_flags_run_takes(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ["--dtype", "bfloat16", "--max-model-len", "4096", "--max-num-seqs", "8",
              "--memory-share", "0.5", "--enforce-eager", "--trust-remote-code",
              "--tp", "2"]  # fmt: skip
    ran = call("run", monkeypatch, "prompts.txt", *engine)[0].engine
    served = call("serve", monkeypatch, *engine)[0].engine
    assert ran == served
    assert (served.dtype, served.max_model_len, served.tensor_parallel_size) == (
        "bfloat16",
        4096,
        2,
    )


def test_serve_writes_the_registry_endpoints_names_and_keeps_the_old_spelling(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = call("serve", monkeypatch, "--endpoints", "fleet.json", "--api-key-env", "K")[0]
    assert built.serve.registry == "fleet.json" and built.serve.api_key_env == "K"
    assert call("serve", monkeypatch, "--registry", "old.json")[0].serve.registry == "old.json"
    ran = call("run", monkeypatch, "prompts.txt", "--endpoints", "fleet.json", "--api-key-env", "K")
    assert ran[0].client.registry == "fleet.json" and ran[0].client.api_key_env == "K"


def test_quiet_and_json_reach_the_run(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert call("run", monkeypatch, "prompts.txt", "--quiet")[1].quiet
    assert call("run", monkeypatch, "prompts.txt", "--json")[1].quiet  # JSON alone on stdout
    assert not call("run", monkeypatch, "prompts.txt")[1].quiet
