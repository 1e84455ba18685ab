"""What `--help` and the CLI's tables show: clean metavars, nothing cut short at any width."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.main import get_command

from hpcinfer.cli.main import app
from hpcinfer.cli.metavars import metavar_for
from hpcinfer.core.terminal import unclipped
from tests.harness import InProcessCLI


def command_paths() -> list[list[str]]:
    """Every command and subcommand, as the words that name it."""
    paths: list[list[str]] = [[]]

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*path, name])
            walk(sub, [*path, name])

    walk(get_command(app), [])
    return paths


@pytest.mark.parametrize("words", command_paths(), ids=lambda w: " ".join(w) or "hpcinfer")
def test_help_has_clean_metavars_and_cuts_nothing_in_a_narrow_terminal(
    words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    ran = InProcessCLI(monkeypatch, capsys)(*words, "--help")
    assert ran.code == 0, ran.output
    assert not re.search(r"<(int|str|float|bool|path|list\[[a-z]+\])>", ran.out), ran.out
    assert "…" not in ran.out
    assert max(len(line) for line in ran.out.splitlines()) <= 60


def test_run_help_names_values_by_what_they_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = InProcessCLI(monkeypatch, capsys)("run", "--help").out
    for shown in ("--tp N", "--time-limit DURATION", "--set FIELD=VALUE", "--endpoints FILE",
                  "--trust-remote-code / --no-trust-remote-code", "--hostfile PATH"):  # fmt: skip
        assert shown in text, shown


def test_metavar_of_each_type() -> None:
    assert metavar_for(int) == "N"
    assert metavar_for(float) == "NUMBER"
    assert metavar_for(list[str]) == "TEXT"
    assert metavar_for(Path) == "PATH"


def _cells(rendered: str) -> str:
    """The table's text without borders, padding or line breaks."""
    return re.sub(r"[\s│┃┏┓┗┛┡┩└┘━─┳┻╇┴┼╋]", "", rendered)


def test_an_unclipped_table_folds_long_values_in_a_narrow_terminal() -> None:
    mask = "ZE_AFFINITY_MASK=0.0,0.1,1.0,1.1,2.0,2.1,3.0,3.1"
    table = Table("worker", "env")
    table.add_row("0", mask)
    out = io.StringIO()
    Console(file=out, width=30).print(unclipped(table))
    assert "…" not in out.getvalue()
    assert mask in _cells(out.getvalue())


def test_plan_into_a_pipe_shows_every_binding_value_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = InProcessCLI(monkeypatch, capsys)("plan", "--profile", "aurora", "--tp", "8")
    assert ran.code == 0, ran.output
    assert "…" not in ran.out
    assert "ZE_AFFINITY_MASK=0.0,0.1,1.0,1.1,2.0,2.1,3.0,3.1" in ran.out


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("grid", "(default: experiments)"),
        ("submit", "(default: beside each config)"),
        ("card", "(default: the run folder)"),
        ("summary", "(default: profile-summary)"),
        ("analyze", "(default: TRACE_DIR"),
    ],
)
def test_each_profile_command_says_where_its_out_goes(
    command: str, default: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    text = InProcessCLI(monkeypatch, capsys)("profile", command, "--help").out
    words = " ".join(text.replace("│", " ").split()).replace("- ", "-")  # unwrapped
    after = words[words.index("-o, --out") + len("-o, --out") :]
    out = re.split(r" (?:-\w, )?--\w", after, maxsplit=1)[0]  # up to the next flag
    assert default in out, out
    assert "resume" not in out and "hpcinfer-out" not in out and "bench" not in out
    # the shared help stays for the commands that use it
    shared = InProcessCLI(monkeypatch, capsys)("run", "--help").out
    assert "default hpcinfer-out/NAME" in shared
