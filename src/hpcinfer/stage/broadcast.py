"""Rank 0 reads each file once and broadcasts it in chunks; every writing rank checks and writes.

One pipeline per rank, in threads (reading, hashing and writing release the GIL; only the
main thread calls MPI), with a few chunk buffers in flight so disk, network and hashing
overlap:

    rank 0:     read ─┬─ crc32 ── Bcast ── write (rank 0's own copy)
                      └─ sha256 (the file's digest, sent in the trailer)
    receivers:  Bcast ─┬─ crc32 check against rank 0's
                       └─ write (temp name; renamed into place once the file checks out)

After each file the participants allgather their errors for it and all stop at the first
failure, so no rank waits for a broadcast that will not come. Files renamed into place are
reported to `on_placed` (the caller journals them and reads them back to verify them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcinfer.stage.comm import Comm
from hpcinfer.stage.manifest import Entry
from hpcinfer.stage.target import commit_file, make_parent, temp_path
from hpcinfer.stage.verify import inside
from hpcinfer.stage.wire import HEADER, OK, SOURCE_FAILED, TRAILER, ChunkInfo, chunks

ReceiveHook = Callable[[int, ChunkInfo, memoryview], None]
_POOL_BYTES = 512 << 20


@dataclass
class Hooks:
    """Seams for tests, never user options. `after_receive(rank, chunk, data)` runs on every
    participant right after a chunk's Bcast, before it is checked (tests corrupt data here)."""

    after_receive: ReceiveHook | None = None


@dataclass
class Outcome:
    """What one rank saw: root digests of the files sent, and its own error if any."""

    digests: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    bytes_sent: int = 0
    seconds: float = 0.0


class _Corrupt(Exception):
    """A chunk whose crc32 differs from rank 0's."""


class _SourceChanged(Exception):
    """The source file is shorter than its listing said."""


class _Slot:
    """One chunk buffer (header + data) with a count of its current users."""

    def __init__(self, chunk_bytes: int) -> None:
        self.buf = bytearray(HEADER.size + chunk_bytes)
        self.view = memoryview(self.buf)
        self.users = 0

    def frame(self, length: int) -> memoryview:
        return self.view[: HEADER.size + length]

    def data(self, length: int) -> memoryview:
        return self.view[HEADER.size : HEADER.size + length]


class _Pool:
    """A fixed set of buffers; a buffer returns when its last user lets go."""

    def __init__(self, depth: int, chunk_bytes: int) -> None:
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._lock = threading.Lock()
        for _ in range(depth):
            self._free.put(_Slot(chunk_bytes))

    def take(self) -> _Slot:
        slot = self._free.get()
        slot.users = 1
        return slot

    def hold(self, slot: _Slot) -> None:
        with self._lock:
            slot.users += 1

    def give(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            free = slot.users == 0
        if free:
            self._free.put(slot)

    def give_when_done(self, slot: _Slot, future: Future[Any]) -> None:
        future.add_done_callback(lambda _f: self.give(slot))


@dataclass
class _Read:
    """A chunk rank 0 has started reading: its buffer, crc32 and sha256 work."""

    slot: _Slot
    crc: Future[int]
    hashed: Future[None]


class _Sink:
    """One file being written under its temporary name."""

    def __init__(self, copy: Path, entry: Entry) -> None:
        self.final = inside(copy, entry.path)
        self.temp = temp_path(self.final)
        self.error: str | None = None
        self.fd = -1
        try:
            make_parent(copy, self.final)
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            self.error = f"cannot create {self.temp}: {exc.strerror or exc}"

    def write(self, data: memoryview, offset: int) -> None:
        if self.error is not None:
            return
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], offset + done)
        except OSError as exc:
            self.error = f"writing {self.temp}: {exc.strerror or exc}"

    def finish(self, keep: bool) -> bool:
        """Close; rename into place if `keep` and nothing failed, else remove. True if placed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if keep and self.error is None:
            try:
                commit_file(self.temp, self.final)
                return True
            except OSError as exc:
                self.error = f"renaming {self.temp} into place: {exc.strerror or exc}"
        with contextlib.suppress(OSError):
            os.unlink(self.temp)
        return False


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise _SourceChanged(f"it ended after {offset + done} bytes")
        done += n


def _crc_after(read: Future[None], view: memoryview) -> int:
    read.result()
    return zlib.crc32(view)


def _hash_after(read: Future[None], hasher: Any, view: memoryview) -> None:
    try:
        read.result()
    except Exception:
        return  # the error is reported through the crc future
    hasher.update(view)


def _check_crc(view: memoryview, expected: int, chunk: ChunkInfo) -> None:
    got = zlib.crc32(view)
    if got != expected:
        raise _Corrupt(
            f"{chunk.describe()} does not match the checksum rank 0 sent (crc32 {got:08x}, "
            f"expected {expected:08x}): the data was damaged in transit or in this node's memory"
        )


def pool_depth(chunk_bytes: int) -> int:
    """Buffers per rank: 4 for chunks up to 128 MiB, 3 above (memory: depth x chunk)."""
    return max(3, min(4, _POOL_BYTES // chunk_bytes))


class Broadcaster:
    """Sends files from rank 0 to the writing ranks of `comm` (use as a context manager)."""

    def __init__(
        self,
        comm: Comm,
        copy: Path | None,
        chunk_bytes: int,
        world_rank: int,
        hooks: Hooks | None = None,
        largest: int | None = None,
    ) -> None:
        """`largest`: the biggest file to send, so small models get small buffers."""
        self.comm = comm
        self.root = comm.Get_rank() == 0
        self.copy = copy
        self.chunk_bytes = chunk_bytes
        self.world_rank = world_rank
        self.hooks = hooks or Hooks()
        self.depth = pool_depth(chunk_bytes)
        self.pool = _Pool(self.depth, min(chunk_bytes, max(largest or chunk_bytes, 1)))
        self._executors: list[ThreadPoolExecutor] = []
        self.read_ex = self._executor("read")
        self.crc_ex = self._executor("crc")
        self.sha_ex = self._executor("sha")
        self.write_ex = self._executor("write")

    def _executor(self, name: str) -> ThreadPoolExecutor:
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"stage-{name}")
        self._executors.append(executor)
        return executor

    def __enter__(self) -> Broadcaster:
        return self

    def __exit__(self, *exc: object) -> None:
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)

    def run(
        self,
        files: list[Entry],
        wanted: set[str],
        on_placed: Callable[[Entry], None],
        on_progress: Callable[[int], None] | None = None,
    ) -> Outcome:
        """Broadcast `files` in order; this rank writes those in `wanted`."""
        outcome = Outcome()
        started = time.monotonic()
        for entry in files:
            sink = (
                _Sink(self.copy, entry) if self.copy is not None and entry.path in wanted else None
            )
            if self.root:
                error, digest, sent = self._send(entry, sink)
            else:
                error, digest, sent = self._receive(entry, sink)
            placed = sink.finish(keep=sent and error is None) if sink is not None else False
            error = error or (sink.error if sink is not None else None)
            if sent and error is None:
                outcome.digests[entry.path] = digest
                outcome.bytes_sent += entry.size
                if placed:
                    try:
                        on_placed(replace(entry, sha256=digest))
                    except OSError as exc:
                        error = f"recording {entry.path} in the journal: {exc.strerror or exc}"
            if on_progress is not None:
                on_progress(outcome.bytes_sent)
            errors = self.comm.allgather(error)
            if error is not None:
                outcome.error = error
            if any(e is not None for e in errors) or not sent:
                break
        outcome.seconds = time.monotonic() - started
        return outcome

    def _after_receive(self, chunk: ChunkInfo, slot: _Slot) -> None:
        if self.hooks.after_receive is not None:
            self.hooks.after_receive(self.world_rank, chunk, slot.data(chunk.length))

    # -- rank 0 ---------------------------------------------------------------------------

    def _prefetch(self, fd: int, chunk: ChunkInfo, hasher: Any) -> _Read:
        slot = self.pool.take()
        view = slot.data(chunk.length)
        read = self.read_ex.submit(_read_into, fd, view, chunk.offset)
        self.pool.hold(slot)
        hashed = self.sha_ex.submit(_hash_after, read, hasher, view)
        self.pool.give_when_done(slot, hashed)
        return _Read(slot, self.crc_ex.submit(_crc_after, read, view), hashed)

    def _send(self, entry: Entry, sink: _Sink | None) -> tuple[str | None, str, bool]:
        """(this rank's error, the file's sha256, whether the whole file went out)."""
        parts = chunks(entry.path, entry.size, self.chunk_bytes)
        hasher = hashlib.sha256()
        problem: str | None = None
        try:
            fd = os.open(entry.origin, os.O_RDONLY)
        except OSError as exc:
            fd, problem = -1, f"cannot read {entry.origin}: {exc.strerror or exc}"
        pending: deque[_Read] = deque()
        writes: list[Future[None]] = []
        ahead = 0
        try:
            for chunk in parts:
                while problem is None and ahead < len(parts) and len(pending) < self.depth - 1:
                    pending.append(self._prefetch(fd, parts[ahead], hasher))
                    ahead += 1
                ahead_read = pending.popleft() if pending else None
                slot = ahead_read.slot if ahead_read else self.pool.take()
                crc = ahead_read.crc if ahead_read else None
                problem = problem or self._crc_or_problem(crc, entry)
                if problem is None:
                    assert crc is not None
                    HEADER.pack_into(slot.buf, 0, OK, crc.result())
                else:
                    HEADER.pack_into(slot.buf, 0, SOURCE_FAILED, 0)
                self.comm.Bcast(slot.frame(chunk.length), root=0)
                if self.hooks.after_receive is not None and ahead_read is not None:
                    wait([ahead_read.hashed])  # a test hook changes data only after hashing
                self._after_receive(chunk, slot)
                if problem is None and sink is not None:
                    self.pool.hold(slot)
                    write = self.write_ex.submit(sink.write, slot.data(chunk.length), chunk.offset)
                    self.pool.give_when_done(slot, write)
                    writes.append(write)
                self.pool.give(slot)
                if problem is not None:
                    wait(writes)
                    return problem, "", False
            digest = self.sha_ex.submit(hasher.hexdigest).result()
            problem = self._changed(fd, entry) if problem is None else problem
            status = OK if problem is None else SOURCE_FAILED
            self.comm.Bcast(bytearray(TRAILER.pack(status, bytes.fromhex(digest))), root=0)
            wait(writes)
            return problem, digest, problem is None
        finally:
            for left in pending:
                wait([left.crc])
                self.pool.give(left.slot)
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _crc_or_problem(crc: Future[int] | None, entry: Entry) -> str | None:
        if crc is None:
            return None
        try:
            crc.result()
        except _SourceChanged as exc:
            return f"{entry.origin} changed while it was being staged ({exc}); rerun later"
        except OSError as exc:
            return f"cannot read {entry.origin}: {exc.strerror or exc}"
        return None

    @staticmethod
    def _changed(fd: int, entry: Entry) -> str | None:
        if fd < 0:
            return f"cannot read {entry.origin}"
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            return f"{entry.origin} changed while it was being staged; rerun when it is stable"
        return None

    # -- the other ranks --------------------------------------------------------------------

    def _receive(self, entry: Entry, sink: _Sink | None) -> tuple[str | None, str, bool]:
        """(this rank's error, rank 0's sha256 of the file, whether the whole file came)."""
        checks: list[Future[None]] = []
        writes: list[Future[None]] = []
        for chunk in chunks(entry.path, entry.size, self.chunk_bytes):
            slot = self.pool.take()
            self.comm.Bcast(slot.frame(chunk.length), root=0)
            self._after_receive(chunk, slot)
            status, crc = HEADER.unpack_from(slot.buf)
            if status != OK:
                self.pool.give(slot)
                wait(checks + writes)
                return None, "", False
            if sink is not None and sink.error is None:
                view = slot.data(chunk.length)
                self.pool.hold(slot)
                check = self.crc_ex.submit(_check_crc, view, crc, chunk)
                self.pool.give_when_done(slot, check)
                self.pool.hold(slot)
                write = self.write_ex.submit(sink.write, view, chunk.offset)
                self.pool.give_when_done(slot, write)
                checks.append(check)
                writes.append(write)
            self.pool.give(slot)
        trailer = bytearray(TRAILER.size)
        self.comm.Bcast(trailer, root=0)
        status, digest = TRAILER.unpack(trailer)
        wait(checks + writes)
        if status != OK:
            return None, "", False
        for check in checks:
            exc = check.exception()
            if exc is not None:
                return str(exc), "", True
        return None, digest.hex(), True
