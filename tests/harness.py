"""The one test harness: the `hpcinfer` entry point called in this process, free ports, and
waiting for a condition. Every test uses these instead of its own copy, so they agree on
exit codes, never hand out one port twice and fail saying what they waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hpcinfer.serve.ports import choose_port, port_in_use

T = TypeVar("T")


# -- the CLI in this process -------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """What a shell sees of one `hpcinfer` call: the exit status and both streams."""

    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        """stdout then stderr, as a terminal shows them."""
        return self.out + self.err


def exit_status(code: object) -> tuple[int, str]:
    """The status a process exiting with `SystemExit(code)` returns, and what Python prints:
    None is 0, an int is itself, anything else is printed to stderr and is 1."""
    if code is None:
        return 0, ""
    if isinstance(code, int):
        return code, ""
    return 1, f"{code}\n"


def call_main(
    args: list[str] | tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    width: int | None = 300,
) -> Ran:
    """`hpcinfer ARGS` as the console script runs it, in this process (monkeypatch chdir/env
    beforehand for the cwd and environment). `width` widens the error console so that no
    message is wrapped; None leaves it as it is."""
    from hpcinfer.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["hpcinfer", *args])
    if width is not None:
        monkeypatch.setattr(cli_main.err, "width", width)
    code: object = None
    try:
        cli_main.main()
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    status, printed = exit_status(code)
    return Ran(status, captured.out, captured.err + printed)


class InProcessCLI:
    """`cli("run", "p.txt", ...)` -> Ran, run in `cwd` with the test's monkeypatch/capsys."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        cwd: Path | None = None,
        width: int | None = 300,
    ) -> None:
        self.monkeypatch, self.capsys, self.width = monkeypatch, capsys, width
        if cwd is not None:
            monkeypatch.chdir(cwd)

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Ran:
        for name, value in (env or {}).items():
            self.monkeypatch.setenv(name, value)
        return call_main(args, self.monkeypatch, self.capsys, self.width)


# -- ports -------------------------------------------------------------------------------------

_handed_out: set[int] = set()  # never the same port twice in one test process


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen by the servers' own rule (`choose_port`) from a
    start spread by pid, so that test runs side by side rarely try the same ones."""
    preferred = 20000 + (os.getpid() % 2000) * 5

    def taken(h: str, port: int) -> bool:
        return port in _handed_out or port_in_use(h, port)

    port = choose_port(host, preferred, 1, in_use=taken).port
    _handed_out.add(port)
    return port


def exited(proc: subprocess.Popen[str]) -> str | None:
    """For `wait_for(give_up=...)`: why waiting on `proc` is pointless (it has ended, with the
    tail of its stderr), else None."""
    if proc.poll() is None:
        return None
    stderr = proc.stderr.read() if proc.stderr is not None else ""
    return f"it exited {proc.returncode}: {stderr[-3000:]}"


# -- waiting -----------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    describe: str,
    *,
    state: Callable[[], object] | None = None,
    give_up: Callable[[], str | None] | None = None,
    interval: float = 0.05,
) -> T:
    """Poll `condition` until it returns something true, and return that. Fails the test
    after `timeout` seconds, or as soon as `give_up()` names a reason (the process it waits
    on has exited), saying what it waited for and the last state seen (`state()`, else the
    condition's last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        reason = give_up() if give_up is not None else None
        if reason is None and time.monotonic() >= deadline:
            reason = f"not within {timeout:g}s"
        if reason is not None:
            last: Any = state() if state is not None else value
            pytest.fail(f"gave up waiting for {describe} ({reason}); last state: {last!r}")
        time.sleep(interval)
