"""Workers of other ranks join the coordinator over TCP.

The coordinator rank listens on a random port; every connection must pass
multiprocessing's HMAC challenge with the job's random key before a single message is
unpickled, then says hello (rank, slot, host, devices). Joins are accepted on a thread and
handed to the coordinator's loop through a doorbell connection, so a slow node joining late
(or never) does not hold up the ranks that are already working.
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, Pipe
from typing import Any

HELLO_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Joined:
    """A worker of another rank, authenticated, with what it said about itself."""

    conn: Connection
    rank: int
    slot: int
    slots: int
    host: str
    devices: list[str]
    node_workers: int


class JoinListener:
    """Accepts the workers of ranks 1..world_size-1 (or of `ranks`: Ray actors, whose
    coordinator runs none) until closed."""

    def __init__(
        self,
        bind_host: str,
        advertise_host: str,
        world_size: int,
        wait_s: float,
        ranks: Iterable[int] | None = None,
    ):
        _allow_open_files(world_size * 2 + 256)
        self.key = secrets.token_bytes(32)
        self._listener = Listener((bind_host, 0), authkey=self.key, backlog=512)
        port = self._listener.address[1]
        self.address = f"{advertise_host}:{port}"
        self._local_address = ("127.0.0.1" if bind_host in ("", "0.0.0.0") else bind_host, port)
        self.world_size = world_size
        self.ranks = list(range(1, world_size) if ranks is None else ranks)
        self.gone: set[int] = set()  # ranks known never to join (their actor ended)
        self.deadline = time.monotonic() + wait_s
        self.slots: dict[int, int] = {}  # rank -> workers it said it runs
        self.joined: dict[int, int] = {}  # rank -> workers that joined
        self.refused: list[str] = []
        self._arrived: list[Joined] = []
        self._lock = threading.Lock()
        self.doorbell, self._ring = Pipe(duplex=False)
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="joins", daemon=True)
        self._thread.start()

    def take(self) -> list[Joined]:
        """Workers that joined since the last call (drains the doorbell)."""
        while self.doorbell.poll():
            self.doorbell.recv()
        with self._lock:
            arrived, self._arrived = self._arrived, []
        return arrived

    def pending(self) -> bool:
        """Whether workers are still expected: a rank not heard from, or one whose workers
        have not all joined, before the join deadline; or workers that joined and are not
        taken yet (a coordinator with no worker of its own would otherwise end its loop
        between the last join and the doorbell)."""
        with self._lock:
            if self._arrived:
                return True
        if time.monotonic() > self.deadline:
            return False
        with self._lock:
            if len(self.slots.keys() | self.gone) < len(self.ranks):
                return True
            return any(
                self.joined.get(r, 0) < n for r, n in self.slots.items() if r not in self.gone
            )

    def give_up(self, rank: int) -> None:
        """`rank` will never join (or join again): the coordinator stops waiting for it."""
        with self._lock:
            self.gone.add(rank)

    def missing_ranks(self) -> list[int]:
        with self._lock:
            return [
                r
                for r in self.ranks
                if r not in self.slots or self.joined.get(r, 0) < self.slots[r]
            ]

    def close(self) -> None:
        """Stop accepting; a connection to ourselves wakes the blocked accept()."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError, EOFError, AuthenticationError):
            Client(self._local_address, authkey=self.key).close()
        self._thread.join(timeout=5)
        self._listener.close()
        # Workers that joined but were never admitted wait for a configuration: tell them
        # there is none, or their ranks (and an MPI barrier at the end) would wait forever.
        for joined in self.take():
            decline(joined.conn)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:
                if self._closed:
                    return
                self.refused.append(f"{type(exc).__name__}: {exc}")
                continue
            if self._closed:
                conn.close()
                return
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: Connection) -> None:
        try:
            if not conn.poll(HELLO_TIMEOUT_S):
                raise ValueError("no hello")
            kind, hello = conn.recv()
            joined = _joined(conn, kind, hello)
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            self.refused.append(f"bad hello: {exc}")
            conn.close()
            return
        with self._lock:
            if self._closed:  # too late: the job is over (close() already drained the rest)
                decline(conn)
                return
            self.slots[joined.rank] = joined.slots
            self.joined[joined.rank] = self.joined.get(joined.rank, 0) + 1
            self._arrived.append(joined)
        with contextlib.suppress(OSError):
            self._ring.send(None)


def decline(conn: Connection) -> None:
    """Tell a worker that joined there is nothing for it (a None configuration), hang up."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(None)
    conn.close()


def _allow_open_files(wanted: int) -> None:
    """One connection per worker: 24,576 workers need more than the usual 1,024 descriptors;
    raise the soft limit toward the hard one (which the site sets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _joined(conn: Connection, kind: Any, hello: Any) -> Joined:
    if kind != "hello" or not isinstance(hello, dict):
        raise ValueError(f"expected a hello, got {kind!r}")
    return Joined(
        conn=conn,
        rank=int(hello["rank"]),
        slot=int(hello["slot"]),
        slots=int(hello["slots"]),
        host=str(hello["host"]),
        devices=[str(d) for d in hello.get("devices", [])],
        node_workers=int(hello.get("node_workers", 1)),
    )
