"""The serving load generator: send requests on an arrival schedule, time every streamed chunk.

`run_load` sends each request when its `Schedule` says (open loop) or when a concurrency slot
frees (closed loop), streams the answer and records a `RequestTiming` per request, on one
clock (`time.monotonic()`, CLOCK_MONOTONIC, which the pacer's timerfd also reads):

- `scheduled_s`: the due time from the schedule; in a closed loop the time the request got
  its slot. `sent_s`: when it was sent (vLLM's TTFT origin; later than scheduled when the
  client lagged, waited for a slot in an open loop, or had to open a connection first).
- `chunk_times_s`: when each streamed chunk that carries tokens arrived, as
  `vllm bench serve` counts them (vLLM 0.32 `endpoint_request_func.py`): every event with a
  choice counts, its text possibly empty (a token that decodes to nothing yet is still a
  decode step); the usage-only chunk and `[DONE]` do not. One deliberate difference: a chat
  stream's role announcement (`{"role": "assistant", "content": ""}`, sent just before the
  first token) is not a token; vLLM's client counts it and so adds a gap of about 0 to ITL.
  All events that arrived in one read share its arrival time, taken in the connection's
  `data_received` (`bench.http_stream`), before any other parsing.
- token counts from the final usage chunk (`stream_options.include_usage`), else the
  request's known `prompt_len` and the counted chunks.

Failures (HTTP errors, cut or malformed streams, timeouts) are recorded and counted, never
retried: a benchmark reports its failures, it does not hide them. (The one resend: a request
written on a kept-alive connection that the server closed, idle, before reading it.) A
stream must end with `[DONE]`; a cut one is a failure even when it carried tokens (vLLM's
client keeps it).

Sends are paced by `bench.pacer` (timerfd: exact wake-ups without spinning). The hot path is
short and has no coroutine: a due request is one `transport.write` of bytes encoded before
the clock started, on an idle keep-alive connection (opened before the start; the pool has
no limit, which would silently throttle an open loop), and the answer is parsed in the
connection's callbacks (`bench.http_stream`, not aiohttp: see there why). The garbage
collector's long-lived objects are frozen for the run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcinfer.bench.arrivals import Schedule
from hpcinfer.bench.dataset import BenchRequest
from hpcinfer.bench.http_stream import Connection, HttpError, Pool, post_bytes, request_head
from hpcinfer.bench.metrics import RequestTiming
from hpcinfer.bench.pacer import Pacer
from hpcinfer.core import openai_wire
from hpcinfer.core.openai_wire import (
    PATHS,
    SseParser,
    StreamError,
    error_text,
    first_choice,
    is_decode_step,
    usage_counts,
)

PROGRESS_EVERY_S = 0.1
"""The progress callback is called at most this often (and once at the end)."""
WARM_CONNECTIONS_MAX = 64
"""Keep-alive connections opened per endpoint before the start, at most (see LoadOptions)."""


@dataclass(frozen=True)
class LoadOptions:
    """How requests are sent. `api_key` goes in `Authorization: Bearer` and nowhere else (it is
    left out of repr, so it is never logged)."""

    model: str
    api: Literal["completions", "chat"] = "completions"
    ignore_eos: bool = True
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    extra_body: dict[str, Any] | None = None
    """More request fields, sent as given (e.g. top_p, seed); they override the defaults."""
    warm_connections: int | None = None
    """Connections opened per endpoint before the clock starts (None: the schedule's
    concurrency limit, else the number of requests, at most WARM_CONNECTIONS_MAX)."""
    use_timerfd: bool = True
    """False forces the pacer's sleep-and-spin fallback (for comparisons)."""


@dataclass
class LoadResult:
    """What a run measured; `summarize(result.timings, result.duration_s)` gives the figures."""

    timings: list[RequestTiming]
    """One per request, in request order."""
    start_s: float
    """The run's time origin (monotonic): scheduled times are start_s + offsets."""
    duration_s: float
    """start_s -> the end of the last response (the throughput denominator)."""
    errors: dict[str, int]
    """Error kind -> count; each failed timing's `error` holds its own detail."""
    max_in_flight: int = 0
    pacer: str = ""
    """The pacer's clock path: "timerfd" or "spin"; "" for a closed loop (not paced)."""
    by_endpoint: dict[str, int] = field(default_factory=dict)
    """Requests sent to each endpoint."""

    @property
    def failed(self) -> int:
        return sum(1 for t in self.timings if not t.ok)


class _Stream:
    """One SSE response as it arrives (`core.openai_wire`); notes when each decode step came."""

    __slots__ = ("chunks", "last_read", "output_tokens", "parser", "prompt_tokens")

    def __init__(self) -> None:
        self.parser = SseParser()
        self.last_read = 0.0
        self.chunks: list[float] = []
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None

    @property
    def done(self) -> bool:
        return self.parser.done

    def feed(self, data: bytes, now: float) -> None:
        """Take the bytes of one read, which arrived at `now` (StreamError when malformed)."""
        self.last_read = now
        for event in self.parser.feed(data):
            self._event(event, now)

    def finish(self) -> None:
        """The response ended: a last event without its newline, then [DONE] or a failure."""
        for event in self.parser.finish():
            self._event(event, self.last_read)
        self.parser.check_done(len(self.chunks))

    def _event(self, event: dict[str, Any], now: float) -> None:
        choice = first_choice(event)
        if choice is not None and is_decode_step(choice):
            self.chunks.append(now)
        usage = usage_counts(event)
        if usage is not None:
            prompt, output = usage
            if prompt is not None:
                self.prompt_tokens = prompt
            if output is not None:
                self.output_tokens = output


def request_body(request: BenchRequest, options: LoadOptions) -> dict[str, Any]:
    """The streaming JSON body of one request (checked: chat needs text or messages)."""
    try:
        return openai_wire.request_body(
            request.api or options.api,
            options.model,
            max_tokens=request.output_len,
            prompt=request.prompt,
            messages=request.messages,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            seed=options.seed,
            stop=list(options.stop),
            ignore_eos=options.ignore_eos,
            extra=options.extra_body,
            sampling=request.sampling,
        )
    except ValueError as exc:
        raise ValueError(f"{request.source}: {exc}") from None


def base_url(endpoint: str) -> str:
    """'http://h:8000/v1/' -> 'http://h:8000': the server's root, where /v1/... is added."""
    url = endpoint.strip().rstrip("/")
    url = url.removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL, e.g. http://host:8000")
    return url


class _Endpoint:
    """One server: its pool of connections, the heads of its requests (one per API), and
    counters."""

    __slots__ = ("heads", "outstanding", "pool", "root", "sent")

    def __init__(self, root: str, headers: dict[str, str]) -> None:
        self.root = root
        self.pool = Pool(root)
        self.heads = {
            api: request_head(self.pool.origin, path, headers) for api, path in PATHS.items()
        }
        self.outstanding = 0
        self.sent = 0


class _Exchange:
    """One request in flight: the handler its connection reports the response to.

    Callbacks come from the connection's `data_received` (or a timer), so a chunk's time is
    the time its read arrived. The first outcome wins; later callbacks are ignored."""

    __slots__ = (
        "connection",
        "endpoint",
        "error_body",
        "finished",
        "index",
        "reason",
        "retried",
        "run",
        "scheduled",
        "sent",
        "status",
        "stream",
        "timer",
    )

    def __init__(self, run: _Run, index: int, scheduled: float, endpoint: _Endpoint) -> None:
        self.run = run
        self.index = index
        self.scheduled = scheduled
        self.endpoint = endpoint
        self.sent = 0.0
        self.status = 0
        self.reason = ""
        self.stream = _Stream()
        self.error_body = b""
        self.connection: Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retried = False
        self.finished = False

    def begin(self) -> None:
        """Send now on an idle connection, else open one first (in a task)."""
        self.sent = time.monotonic()
        self.timer = self.run.loop.call_later(self.run.options.timeout_s, self._timeout)
        connection = self.endpoint.pool.take_idle()
        if connection is not None:
            self._send_on(connection)
        else:
            self.run.spawn(self._connect_and_send())

    async def _connect_and_send(self) -> None:
        try:
            connection = await self.endpoint.pool.connect()
        except HttpError as exc:
            self._fail(StreamError(exc.kind, exc.detail))
            return
        if self.finished:  # timed out while connecting
            connection.abort()
            return
        self._send_on(connection)

    def _send_on(self, connection: Connection) -> None:
        self.connection = connection
        head = self.endpoint.heads[self.run.apis[self.index]]
        connection.send(post_bytes(head, self.run.bodies[self.index]), self)

    # -- ResponseHandler

    def on_head(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason

    def on_body(self, data: bytes, now: float) -> None:
        if self.finished:
            return
        if self.status != 200:
            if len(self.error_body) < 65536:
                self.error_body += data
            return
        try:
            self.stream.feed(data, now)
        except StreamError as failure:
            self._drop_connection()
            self._fail(failure)

    def on_end(self) -> None:
        if self.finished:
            return
        if self.status != 200:
            kind = f"HTTP {self.status} {self.reason}".strip()
            self._fail(StreamError(kind, error_text(self.status, self.error_body)))
            return
        try:
            self.stream.finish()
        except StreamError as failure:
            self._fail(failure)
            return
        self._succeed()

    def on_error(self, error: HttpError, got_bytes: bool) -> None:
        if self.finished:
            return
        connection = self.connection
        if not got_bytes and not self.retried and connection is not None and connection.used:
            # a kept-alive connection the server closed as we wrote: nothing was answered,
            # so this is not the server's failure; send once more on a new connection
            self.retried = True
            self.connection = None
            self.run.spawn(self._connect_and_send())
            return
        self._fail(StreamError(error.kind, error.detail))

    # -- outcomes

    def _timeout(self) -> None:
        self.timer = None
        if self.finished:
            return
        self._drop_connection()
        self._fail(
            StreamError(f"no complete response within {self.run.options.timeout_s:g} s (timeout)")
        )

    def _drop_connection(self) -> None:
        if self.connection is not None:
            self.connection.abort()
            self.connection = None

    def _succeed(self) -> None:
        stream = self.stream
        request = self.run.requests[self.index]
        prompt_tokens = stream.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = request.prompt_len or 0
        output_tokens = stream.output_tokens
        if output_tokens is None:
            output_tokens = len(stream.chunks)
        timing = RequestTiming.from_chunks(
            self.scheduled, self.sent, stream.chunks, prompt_tokens, output_tokens
        )
        if not timing.ok:
            self.run.count_error(timing.error or "the stream carried no token")
        self._close(timing)

    def _fail(self, failure: StreamError) -> None:
        self.run.count_error(failure.kind)
        request = self.run.requests[self.index]
        detail = f"{request.source}: {self.endpoint.root}: {failure.detail}"
        self._close(RequestTiming.failed(self.scheduled, self.sent, detail))

    def _close(self, timing: RequestTiming) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.endpoint.outstanding -= 1
        self.run.finish(self.index, timing)


class _Run:
    """One run on one event loop; every method runs on that loop."""

    def __init__(
        self,
        endpoints: Sequence[str],
        requests: Sequence[BenchRequest],
        schedule: Schedule,
        options: LoadOptions,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        headers = {
            "User-Agent": "hpcinfer-bench",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        self.endpoints = [_Endpoint(base_url(e), headers) for e in endpoints]
        self.requests = requests
        self.schedule = schedule
        self.options = options
        self.progress = progress
        self.n = len(requests)
        # encoded before the clock starts: json.dumps of a long prompt costs tens of µs
        self.bodies = [
            json.dumps(request_body(r, options), separators=(",", ":")).encode() for r in requests
        ]
        self.apis = [r.api or options.api for r in requests]
        self.limit = schedule.max_concurrency
        self.timings: list[RequestTiming | None] = [None] * self.n
        self.errors: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.finished = 0
        self.last_end = 0.0
        self.next_index = 0  # the next request to admit, in schedule order
        self.waiting: deque[tuple[int, float]] = deque()  # (index, scheduled) awaiting a slot
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_progress = 0.0
        self.pacer: Pacer | None = None
        self.due: tuple[float, ...] = ()

    async def main(self) -> LoadResult:
        self.loop = asyncio.get_running_loop()
        try:
            await self._warm()
            self.done: asyncio.Future[None] = self.loop.create_future()
            gc.collect()
            gc.freeze()  # a full collection would walk everything made so far, mid-run
            try:
                start = self._begin()
                await self.done
            finally:
                gc.unfreeze()
        finally:
            if self.pacer is not None:
                self.pacer.close()
            for task in self.tasks:
                task.cancel()
            for endpoint in self.endpoints:
                endpoint.pool.close()
        timings = [t for t in self.timings if t is not None]
        assert len(timings) == self.n
        return LoadResult(
            timings=timings,
            start_s=start,
            duration_s=max(self.last_end - start, 1e-9),
            errors=dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            max_in_flight=self.max_in_flight,
            pacer=self.pacer.kind if self.pacer is not None else "",
            by_endpoint={e.root: e.sent for e in self.endpoints},
        )

    async def _warm(self) -> None:
        """Open keep-alive connections now, so the first sends do not pay for TCP set-up."""
        count = self.options.warm_connections
        if count is None:
            count = min(self.limit or self.n, self.n, WARM_CONNECTIONS_MAX)
        per_endpoint = math.ceil(count / len(self.endpoints))
        if per_endpoint >= 1:
            await asyncio.gather(*(e.pool.warm(per_endpoint) for e in self.endpoints))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _begin(self) -> float:
        """Start the clock: the first requests go, and the pacer takes over an open loop."""
        start = time.monotonic()
        if self.schedule.closed_loop:
            assert self.limit is not None
            for _ in range(min(self.limit, self.n)):
                self._start(self.next_index, start)
                self.next_index += 1
            return start
        self.due = self.schedule.send_times(start)
        self.pacer = Pacer(use_timerfd=self.options.use_timerfd)
        self.pacer.call_at(self.due[0], self._fire)
        return start

    def _fire(self) -> None:
        """The pacer's wake-up: admit every request now due, then wait for the next."""
        try:
            self._admit_due()
        except Exception as exc:  # a bug here must end the run, not leave it waiting
            if not self.done.done():
                self.done.set_exception(exc)

    def _admit_due(self) -> None:
        due, n = self.due, self.n
        now = time.monotonic()
        while self.next_index < n and due[self.next_index] <= now:
            i = self.next_index
            self.next_index += 1
            if self.limit is not None and self.in_flight >= self.limit:
                self.waiting.append((i, due[i]))
            else:
                self._start(i, due[i])
        if self.next_index < n:
            assert self.pacer is not None
            self.pacer.call_at(due[self.next_index], self._fire)

    def _start(self, index: int, scheduled: float) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        endpoint = self._pick()
        endpoint.outstanding += 1
        endpoint.sent += 1
        _Exchange(self, index, scheduled, endpoint).begin()

    def _pick(self) -> _Endpoint:
        """The endpoint with the fewest requests outstanding (then the fewest sent)."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        return min(endpoints, key=lambda e: (e.outstanding, e.sent))

    def finish(self, index: int, timing: RequestTiming) -> None:
        now = time.monotonic()
        self.timings[index] = timing
        self.finished += 1
        self.in_flight -= 1
        if now > self.last_end:
            self.last_end = now
        if self.schedule.closed_loop:
            if self.next_index < self.n:
                self._start(self.next_index, now)
                self.next_index += 1
        elif self.waiting:
            self._start(*self.waiting.popleft())
        if self.finished == self.n and not self.done.done():
            self.done.set_result(None)
        if self.progress is not None and (
            self.finished == self.n or now - self.last_progress >= PROGRESS_EVERY_S
        ):
            self.last_progress = now
            try:
                self.progress(self.finished, self.n)
            except Exception as exc:  # the caller's bug: end the run with it, do not hang
                if not self.done.done():
                    self.done.set_exception(exc)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (less work per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_load(
    endpoints: Sequence[str],
    requests: Sequence[BenchRequest],
    schedule: Schedule,
    options: LoadOptions,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Send `requests[i]` at `schedule`'s i-th time (or as slots free, in a closed loop) to
    the least busy of `endpoints` (server roots such as http://host:8000), wait for every
    answer, and return the timings. Blocking: runs its own event loop (uvloop when installed).

    `progress(done, total)` is called from the loop at most every PROGRESS_EVERY_S seconds,
    so it must be quick. Raises ValueError before anything is sent when the inputs do not
    fit together (counts, URLs, a request the chosen API cannot carry).
    """
    if not endpoints:
        raise ValueError("no endpoints to send to: give at least one server URL")
    if len(requests) != len(schedule):
        raise ValueError(
            f"{len(requests)} requests but the schedule has {len(schedule)} send times: "
            "build the schedule for the same number of requests"
        )
    if not requests:
        raise ValueError("no requests to send")
    if not (options.timeout_s > 0):
        raise ValueError(f"timeout_s must be above 0 seconds, not {options.timeout_s}")
    run = _Run(endpoints, requests, schedule, options, progress)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(run.main())
