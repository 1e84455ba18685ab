"""A stop request to every serve rank of a launch, through a file beside the registry.

A signal to `hpcinfer serve --launcher ...` used to go to the launchers only. mpiexec and
srun pass SIGTERM on to their ranks, but an ssh client does not: it exits (255), the remote
rank never hears of it and keeps its servers running. So the launching process first writes
`<registry>.stop` holding the launch id; every rank of that launch polls for it (the
registry's folder is on a file system every node sees) and stops its servers as on SIGTERM.
Only when the ranks have not ended after a grace period do the launchers get the signal. A
stop file of another launch (an earlier one killed before it removed its own) is ignored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpcinfer.core.stop import StopSignal
from hpcinfer.outputs.atomic import write_text_atomic

POLL_S = 0.5
RANKS_GRACE_S = 120.0
"""How long the ranks get to stop by themselves (servers' stop grace, rank 0's last merge)
before their launchers are signalled too."""


def stop_path(registry: Path) -> Path:
    return registry.with_name(registry.name + ".stop")


def requested(registry: Path, launch: str) -> bool:
    """A stop was asked for this launch."""
    with contextlib.suppress(OSError):
        return stop_path(registry).read_text(encoding="utf-8").strip() == launch
    return False


@contextmanager
def relay_to_ranks(
    registry: Path, launch: str, stop: StopSignal, grace_s: float = RANKS_GRACE_S
) -> Iterator[StopSignal]:
    """While the launch runs: a stop request on `stop` writes the stop file at once, and
    reaches the returned signal (what the launchers get) after `grace_s`, or at once when
    it is an abort. The file is removed at the end."""
    launchers = StopSignal()
    done = threading.Event()

    def relay() -> None:
        while not stop.wait(POLL_S):
            if done.is_set():
                return
        with contextlib.suppress(OSError):
            write_text_atomic(stop_path(registry), launch + "\n")
        waited = 0.0
        while not done.is_set() and waited < grace_s and not stop.aborted:
            done.wait(POLL_S)
            waited += POLL_S
        if not done.is_set():
            launchers.request(stop.reason or "stop requested")
            if stop.aborted:
                launchers.abort(stop.reason or "abort requested")

    thread = threading.Thread(target=relay, name="serve-stop-relay", daemon=True)
    thread.start()
    try:
        yield launchers
    finally:
        done.set()
        thread.join(timeout=5)
        stop_path(registry).unlink(missing_ok=True)


def watch_for_stop(registry: Path, launch: str, stop: StopSignal) -> threading.Event:
    """In a rank: a thread that turns this launch's stop file into `stop.drain()`. Set the
    returned event to end the thread."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(POLL_S):
            if requested(registry, launch):
                stop.drain("stop requested (hpcinfer serve was signalled)")
                return

    threading.Thread(target=watch, name="serve-stop-watch", daemon=True).start()
    return finished
