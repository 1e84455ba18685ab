"""The shared test harness keeps the promises tests rely on: Python's exit-status rule, ports
never handed out twice, and waits that fail saying what they waited for."""

from __future__ import annotations

import socket

import pytest

from tests.harness import InProcessCLI, exit_status, free_port, wait_for


@pytest.mark.parametrize(
    ("code", "status", "printed"),
    [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("bad spec", 1, "bad spec\n")],
)
def test_exit_status_follows_pythons_rule(code: object, status: int, printed: str) -> None:
    assert exit_status(code) == (status, printed)


def test_the_in_process_cli_returns_the_status_and_both_streams(main_cli: InProcessCLI) -> None:
    ran = main_cli("run", "--frobnicate")
    assert ran.code == 2
    assert "--frobnicate" in ran.err and ran.output.endswith(ran.err)


def test_free_ports_are_free_and_never_repeat() -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_wait_for_returns_the_first_true_value() -> None:
    values = iter([0, [], "ready"])
    assert wait_for(lambda: next(values), 5, "a value", interval=0) == "ready"


def test_wait_for_names_what_it_waited_for_and_the_last_state() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"the queue to drain .*last state: \[3\]"):
        wait_for(lambda: False, 0.1, "the queue to drain", state=lambda: [3])


def test_wait_for_gives_up_at_once_when_told_why() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"the job \(it exited 1\); last state: 0"):
        wait_for(lambda: 0, 600, "the job", give_up=lambda: "it exited 1")
