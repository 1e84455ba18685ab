"""The README's examples run as written, on the built-in tiny model.

Every ```bash block of README.md runs, unless an HTML comment right before it says why not
(`<!-- example: skip (needs a Slurm cluster) -->`: a GPU, a cluster, a scheduler, ssh hosts
or a model download). `<!-- example: makes PATH ... -->` names files the block says it
writes. Each block runs under `bash -e` in its own empty folder, with the README's usual
inputs there (`prompts.txt`, `prompts.jsonl`) and this venv's `hpcinfer` first on PATH; it
must exit 0, write what it names, and leave no process of its own behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, read_rows

README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*example:\s*(?P<body>.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
BLOCK_TIMEOUT_S = 420  # under pytest-timeout's 600 s, so a hung block reports its output


@dataclass(frozen=True)
class Example:
    line: int  # the fence's line in README.md, 1-based
    code: str
    skip: str | None  # why it is not run
    makes: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def readme_examples() -> list[Example]:
    """The ```bash blocks of README.md with their markers (the comment lines right above)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if fence["lang"] == "bash":
            skip, makes = None, ()
            above = index - 1
            while above >= 0 and (marker := MARKER.fullmatch(lines[above].strip())):
                body = marker["body"]
                if body.startswith("skip"):
                    skip = body.removeprefix("skip").strip(" ()") or "no reason given"
                elif body.startswith("makes "):
                    makes = tuple(body.removeprefix("makes ").split())
                else:
                    raise ValueError(f"README.md:{above + 1}: unknown example marker {body!r}")
                above -= 1
            examples.append(Example(index + 1, "\n".join(lines[index + 1 : end]), skip, makes))
        index = end + 1
    return examples


EXAMPLES = readme_examples()
RUN = [example for example in EXAMPLES if example.skip is None]


def test_every_block_is_run_or_says_why_not() -> None:
    assert RUN, "no README example runs"
    for example in EXAMPLES:
        assert example.skip != "no reason given", f"{example.name}: a skip needs a reason"
    # The first lines are the two commands a new user types: install + the example job,
    # install + every test.
    first = EXAMPLES[0].code.splitlines()
    assert first[0].startswith(
        "bash scripts/install.sh && .venv/bin/hpcinfer run examples/simple_test.yaml"
    )
    assert first[1].startswith("bash scripts/test.sh ")
    assert (REPO / "scripts" / "install.sh").is_file() and (REPO / "scripts" / "test.sh").is_file()


def block_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = dict(cli_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("HPCINFER_PROFILE", None)
    return env


def own_processes(folder: Path) -> list[str]:
    """Processes whose working directory is in `folder`: what a block left running."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            left.append(f"{proc.name}: {cmdline.strip()}")
    return left


def run_block(code: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`bash -e` on the block in `folder`, in its own session; whatever it leaves running is
    killed after (and reported by the caller)."""
    script = folder / ".example.sh"
    script.write_text(code + "\n", encoding="utf-8")
    log = folder.parent / "example.log"  # a file: a server left running cannot hold it open
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            ["bash", "-e", str(script)],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            sink.write(f"\n(timed out after {BLOCK_TIMEOUT_S} s)")
    script.unlink()
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def kill_left(folder: Path) -> None:
    for entry in own_processes(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)


def write_inputs(folder: Path) -> None:
    """The inputs the README's examples name without writing them."""
    prompts = ["Once upon a time", "The capital of France is", "Hello, my name is", "An HPC job"]
    (folder / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)),
        encoding="utf-8",
    )


@pytest.mark.parametrize("example", RUN, ids=[example.name for example in RUN])
def test_the_readme_example_runs_as_written(
    example: Example, tmp_path: Path, cli_env: dict[str, str], rsync: str
) -> None:
    folder = tmp_path / "example"
    folder.mkdir()
    write_inputs(folder)
    try:
        ran = run_block(example.code, folder, block_env(cli_env))
        left = own_processes(folder)
    finally:
        kill_left(folder)
    assert ran.returncode == 0, f"{example.name} exited {ran.returncode}:\n{ran.stdout[-6000:]}"
    assert not left, f"{example.name} left processes running: {left}"
    for made in example.makes:
        assert (folder / made).is_file(), f"{example.name} did not write {made}:\n{ran.stdout}"


def test_the_first_command_runs_the_example_job(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The README's first command less its install step (this venv is the installed one):
    simple_test.py's four prompts on the tiny model, results in hpcinfer-out/simple_test/."""
    command = EXAMPLES[0].code.splitlines()[0].split("#")[0]
    command = command.removeprefix("bash scripts/install.sh && ").strip()
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    ran = subprocess.run(
        ["bash", "-e", "-c", command],
        cwd=tmp_path,
        env=block_env(cli_env),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = tmp_path / "hpcinfer-out" / "simple_test"
    rows = read_rows(out / "results.jsonl")
    prompts = (REPO / "examples" / "prompts" / "0.in").read_text().splitlines()
    assert len(rows) == len([p for p in prompts if p.strip()]) == 4
    assert all(row["status"] == "ok" for row in rows)
    text = (out / "text" / "examples" / "prompts" / "0.out").read_text()
    assert text.count("Generated text: ") == 4
