"""Run callbacks on an event loop at exact times: the clock a load generator sends by.

Why not `loop.call_at` / `asyncio.sleep`: asyncio waits in epoll with a timeout in whole
milliseconds, rounded up, and uvloop's timers count in milliseconds too, so a timer fires up
to about 1 ms late (0.5 ms on average). At 500 requests/s that is half the gap between two
sends, and a server stub that times its tokens that way adds the same error to every TTFT it
is meant to fix. A Linux `timerfd` armed at an absolute CLOCK_MONOTONIC time (the clock
`time.monotonic()` reads) has nanosecond resolution and wakes epoll itself, so the loop sleeps
until exactly the due time and does not spin. Where timerfd is missing (not Linux, no libc
symbol), the pacer sleeps on the loop's timer until shortly before the due time and spins the
rest (`SPIN_S`), which is exact at the cost of that much CPU per wake-up.

One `Pacer` per event loop holds a heap of (due time, callback); only its head is armed. Due
callbacks run directly from the timer's wake-up, in due-time order (ties in the order they were
added).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any, Literal

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
SPIN_S = 0.002
"""Fallback only: wake this long before the due time on the loop's timer, then spin."""

PacerKind = Literal["timerfd", "spin"]


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC, armed at absolute `time.monotonic()` times.

    Raises OSError when the platform has none (the caller falls back)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create = libc.timerfd_create
            settime = libc.timerfd_settime
        except (OSError, AttributeError) as exc:
            raise OSError(f"timerfd is not available here: {exc}") from None
        create.argtypes = (ctypes.c_int, ctypes.c_int)
        create.restype = ctypes.c_int
        settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        )
        settime.restype = ctypes.c_int
        self._settime = settime
        fd = create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create failed: {os.strerror(err)}")
        self.fd: int = fd
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)

    def arm(self, when: float) -> None:
        """Fire once at monotonic time `when` (at once when it is past)."""
        sec = math.floor(when)
        nsec = math.ceil((when - sec) * 1e9)
        if nsec >= 1_000_000_000:
            sec, nsec = sec + 1, nsec - 1_000_000_000
        if sec <= 0 and nsec <= 0:
            nsec = 1  # all zeros would disarm it
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = sec, nsec
        self._call(self._spec_ref)

    def disarm(self) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = 0, 0
        self._call(self._spec_ref)

    def _call(self, spec: Any) -> None:
        if self._settime(self.fd, TFD_TIMER_ABSTIME, spec, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime failed: {os.strerror(err)}")

    def clear(self) -> None:
        """Consume the expiration count so the fd stops being readable."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled sleeper (its task was cancelled) is skipped
        future.set_result(None)


class Pacer:
    """Exact-time callbacks on one event loop (create it inside the running loop).

    `kind` says which clock path is in use: "timerfd" (sleeps, no spinning) or "spin" (the
    fallback). `use_timerfd=False` forces the fallback (tests, comparisons).
    """

    def __init__(self, use_timerfd: bool = True, spin_s: float = SPIN_S) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._spin_s = spin_s
        self._armed_at: float | None = None
        self._fallback: asyncio.TimerHandle | None = None
        self._timer: TimerFd | None = None
        if use_timerfd:
            try:
                self._timer = TimerFd()
            except OSError:
                self._timer = None
        if self._timer is not None:
            self._loop.add_reader(self._timer.fd, self._on_timerfd)
        self.kind: PacerKind = "timerfd" if self._timer is not None else "spin"

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` at monotonic time `when` (as soon as possible when past)."""
        heapq.heappush(self._heap, (when, next(self._seq), callback, args))
        if self._armed_at is None or when < self._armed_at:
            self._arm(when)

    async def sleep_until(self, when: float) -> None:
        """Return at monotonic time `when`; at once, without yielding, when it is past."""
        if when <= time.monotonic():
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self.call_at(when, _wake, future)
        await future

    def __len__(self) -> int:
        return len(self._heap)

    def close(self) -> None:
        """Stop the timer; callbacks not yet due are dropped."""
        self._heap.clear()
        self._armed_at = None
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        if self._timer is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._timer.fd)
            self._timer.close()
            self._timer = None

    # -- internals ---------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._armed_at = when
        if self._timer is not None:
            self._timer.arm(when)
            return
        if self._fallback is not None:
            self._fallback.cancel()
        delay = when - self._spin_s - time.monotonic()
        # loop.time() may be a coarse clock (uvloop's is cached in ms): use a relative delay
        self._fallback = self._loop.call_later(max(delay, 0.0), self._on_fallback)

    def _on_timerfd(self) -> None:
        assert self._timer is not None
        self._timer.clear()
        self._run_due()

    def _on_fallback(self) -> None:
        self._fallback = None
        heap = self._heap
        if heap:
            due = heap[0][0]
            while time.monotonic() < due:  # the spin, at most about SPIN_S
                pass
        self._run_due()

    def _run_due(self) -> None:
        """Run every callback that is due, then arm for the next one."""
        heap = self._heap
        self._armed_at = None
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, callback, args = heapq.heappop(heap)
            try:
                callback(*args)
            except Exception as exc:  # one bad callback must not stop the clock
                self._loop.call_exception_handler(
                    {"message": "pacer callback failed", "exception": exc}
                )
            if heap and heap[0][0] > now:
                now = time.monotonic()  # callbacks take time: run what fell due meanwhile
        if heap:
            self._arm(heap[0][0])
        elif self._timer is not None:
            self._timer.disarm()
