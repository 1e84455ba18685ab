"""A worker starting its engine reads no messages: a watch on its connection ends it at once
on stop, abort or a closed connection, and hands the connection back once the engine is up."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection

import pytest

from hpcinfer.run.worker import _EndsOnStop

_fork = multiprocessing.get_context("fork")


def _start_engine_forever(conn: Connection, coordinators: Connection) -> None:
    coordinators.close()  # the fork's copy: the coordinator's end is the parent's alone
    with _EndsOnStop(conn):
        time.sleep(600)  # an engine that would take ten minutes to load


@pytest.mark.parametrize(("message", "code"), [("stop", 0), ("abort", 0), (None, 1)])
def test_a_starting_worker_ends_at_once(message: str | None, code: int) -> None:
    ours, theirs = _fork.Pipe()
    worker = _fork.Process(target=_start_engine_forever, args=(theirs, ours))
    worker.start()
    theirs.close()
    if message is None:
        ours.close()  # the coordinator is gone (or cut this worker off)
    else:
        ours.send((message, {}))
    worker.join(timeout=60)
    if worker.exitcode is None:
        worker.kill()
        worker.join()
        pytest.fail(f"the worker did not end on {message or 'a closed connection'}")
    assert worker.exitcode == code


def test_the_connection_is_the_workers_again_once_the_engine_is_up() -> None:
    ours, theirs = _fork.Pipe()
    with _EndsOnStop(theirs):
        pass  # the engine started
    ours.send(("units", {"units": []}))
    assert theirs.poll(5) and theirs.recv() == ("units", {"units": []})  # not taken by the watch
