"""The dispatcher: the Engine protocol over OpenAI-compatible servers (`--engine openai`).

An asyncio streaming client (aiohttp, uvloop when installed) runs in a background thread of
the worker, so the worker loop, the output store, resume and exit codes are exactly those of
the offline engine. Requests are started only when an endpoint has a free slot (a bound per
endpoint, least outstanding first), so a million queued records cost no coroutines. Every
result keeps its own record id: requests are keyed, never matched in completion order (the
bug of the Aurora vLLM server scripts' client).
Connection errors, 5xx, timeouts, malformed and truncated streams are retried on
another endpoint with backoff; a record becomes an error row only when its retries run out,
or at once when a server refuses it for good (4xx). When no endpoint has answered for
`client.all_down_s`, the run fails and committed work is kept for the rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcinfer.core.openai_wire import PATHS, StreamError, error_text, retryable_status
from hpcinfer.core.server_probe import (
    ProbeError,
    failure_reason,
    healthy_async,
    list_models_async,
)
from hpcinfer.engines.endpoint_pool import EndpointPool, EndpointState
from hpcinfer.engines.openai_api import RequestRejected, StreamResult, api_for, record_body
from hpcinfer.errors import EngineError
from hpcinfer.records import Record, Result
from hpcinfer.spec import ClientSpec, SamplingSpec

POLL_WAIT_S = 0.05
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Target:
    """An endpoint the job was given: its base URL and the model it serves ('' = ask it)."""

    url: str
    model: str = ""


@dataclass(frozen=True)
class ClientSetup:
    """What a dispatcher worker needs; the API key stays in the environment (named here)."""

    targets: tuple[Target, ...]
    client: ClientSpec
    sampling: SamplingSpec
    model: str | None = None  # the job's --model: the served model name to ask for
    registry: str | None = None


class FatalDispatchError(Exception):
    """The whole run cannot go on (no endpoint answers, the API key is refused)."""


@dataclass
class _Job:
    record: Record
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class OpenAIEngine:
    """Engine protocol over a pool of OpenAI-compatible endpoints."""

    def __init__(self, setup: ClientSetup) -> None:
        try:
            import aiohttp
        except ImportError as exc:
            raise EngineError(f"aiohttp is not importable ({exc}): pip install aiohttp") from exc
        self._aiohttp = aiohttp
        self._setup = setup
        self._spec = setup.client
        self._pool = EndpointPool(
            limit=self._spec.inflight_per_endpoint, eject_after=self._spec.eject_after
        )
        self._done: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._inflight = 0
        self._pending: deque[_Job] = deque()
        self._fatal: str | None = None
        self._registry_mtime: float | None = None
        self._down_since: float | None = None
        self._headers = {"Content-Type": "application/json"}
        key = os.environ.get(self._spec.api_key_env)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hpcinfer-dispatch", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            self.model_name: str = future.result(timeout=3 * self._spec.connect_timeout_s + 5)
        except FatalDispatchError as exc:
            self.close()
            raise EngineError(str(exc)) from None

    # -- the Engine protocol (called from the worker's thread) ------------------------------

    def submit(self, records: Sequence[Record]) -> list[Result]:
        rejected = [Result.failed(r.id, r.error) for r in records if r.error is not None]
        good = [r for r in records if r.error is None]
        if good:
            self._inflight += len(good)
            self._loop.call_soon_threadsafe(self._enqueue, good)
        return rejected

    def poll(self) -> list[Result]:
        results: list[Result] = []
        with contextlib.suppress(queue.Empty):
            results.append(self._done.get(timeout=POLL_WAIT_S))
            while True:
                results.append(self._done.get_nowait())
        if self._fatal is not None and not results:
            raise EngineError(self._fatal)
        self._inflight -= len(results)
        return results

    def inflight(self) -> int:
        return self._inflight

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        with contextlib.suppress(RuntimeError):
            self._loop.close()

    # -- on the event loop ------------------------------------------------------------------

    async def _start(self) -> str:
        aiohttp = self._aiohttp
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        self._timeout = aiohttp.ClientTimeout(
            total=self._spec.request_timeout_s, sock_connect=self._spec.connect_timeout_s
        )
        self._probe_timeout = aiohttp.ClientTimeout(total=self._spec.connect_timeout_s)
        targets = list(self._setup.targets)
        deadline = time.monotonic() + min(self._spec.connect_timeout_s, self._spec.all_down_s)
        answers = await self._probe_all(targets)
        while not any(isinstance(a, str) for a in answers) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            answers = await self._probe_all(targets)
        if not any(isinstance(a, str) for a in answers):
            lines = "; ".join(f"{t.url}: {a}" for t, a in zip(targets, answers, strict=True))
            raise FatalDispatchError(
                f"none of the {len(targets)} endpoint(s) answers /v1/models ({lines}); start "
                "servers with `hpcinfer serve`, or check the URLs and `hpcinfer endpoints`"
            )
        model = self._setup.model or ""
        for target, answer in zip(targets, answers, strict=True):
            served = target.model or (answer if isinstance(answer, str) else "")
            state = self._pool.add(target.url, self._setup.model or served)
            if not isinstance(answer, str):
                state.in_rotation = False  # rechecked like any failed endpoint
                state.last_error = str(answer)
                self._loop.call_later(state.recheck_delay_s, self._schedule_recheck, state)
            model = model or served
        self._registry_mtime = self._registry_stat()
        self._loop.call_later(WATCH_INTERVAL_S, self._watch)
        return model

    async def _probe_all(self, targets: list[Target]) -> list[str | Exception]:
        return list(await asyncio.gather(*(self._probe(t) for t in targets)))

    async def _probe(self, target: Target) -> str | Exception:
        """The model an endpoint serves (first of /v1/models), or why it did not answer."""
        try:
            cards = await list_models_async(self._session, target.url, self._probe_timeout)
        except ProbeError as exc:
            if exc.status in (401, 403):
                raise FatalDispatchError(
                    f"{target.url} refused the API key ({exc.reason});"
                    f" set ${self._spec.api_key_env} to the servers' key"
                ) from None
            return StreamError(exc.reason)
        if not cards:
            return StreamError("/v1/models listed no model")
        return str(cards[0]["id"])

    def _enqueue(self, records: list[Record]) -> None:
        self._pending.extend(_Job(r) for r in records)
        self._pump()

    def _pump(self) -> None:
        """Start requests while an endpoint has a free slot."""
        while self._pending:
            job = self._pending[0]
            state = self._pool.pick(job.tried)
            if state is None:
                return
            self._pending.popleft()
            self._loop.create_task(self._attempt(job, state))

    async def _attempt(self, job: _Job, state: EndpointState) -> None:
        job.attempts += 1
        started = time.monotonic()
        try:
            result = await self._request(job.record, state, started)
        except RequestRejected as exc:
            self._pool.release(state, ok=True)
            self._finish(Result.failed(job.record.id, f"{job.record.where}: {state.url}: {exc}"))
        except FatalDispatchError as exc:
            self._pool.release(state, ok=False, error=str(exc))
            self._fail_run(str(exc))
        except Exception as exc:  # retryable: connection, 5xx, timeout, malformed, truncated
            detail = f"{state.url}: {failure_reason(exc)}"
            if self._pool.release(state, ok=False, error=detail):
                self._loop.call_later(state.recheck_delay_s, self._schedule_recheck, state)
            self._retry(job, state.url, detail)
        else:
            self._pool.release(state, ok=True)
            self._down_since = None
            self._finish(result)
        self._pump()

    async def _request(self, record: Record, state: EndpointState, started: float) -> Result:
        api = api_for(record, self._spec.api)
        body = record_body(record, api, state.model, self._setup.sampling)
        stream = StreamResult.for_record(record)
        ttft: float | None = None
        async with self._session.post(
            state.url + PATHS[api], json=body, timeout=self._timeout
        ) as response:
            if response.status != 200:
                text = error_text(response.status, await response.read())
                if response.status in (401, 403):
                    raise FatalDispatchError(
                        f"{state.url} refused the API key ({text}); set "
                        f"${self._spec.api_key_env} to the servers' key"
                    )
                if retryable_status(response.status):
                    raise StreamError(text)
                raise RequestRejected(text)
            async for data in response.content.iter_any():
                if stream.feed(data) and ttft is None:
                    ttft = time.monotonic() - started
        stream.finish()
        result = Result(
            id=record.id,
            text=stream.text,
            finish_reason=stream.finish_reason,
            prompt_tokens=stream.prompt_tokens,
            output_tokens=stream.chunks if stream.output_tokens is None else stream.output_tokens,
            latency_s=round(time.monotonic() - started, 6),
            ttft_s=round(ttft, 6) if ttft is not None else None,
            endpoint=state.url,
        )
        stream.fill(result)
        return result

    def _retry(self, job: _Job, url: str, detail: str) -> None:
        job.errors.append(detail)
        if url not in job.tried:
            job.tried.append(url)
        if job.attempts > self._spec.retries:
            self._finish(
                Result.failed(
                    job.record.id,
                    f"{job.record.where}: gave up after {job.attempts} attempts: "
                    + "; ".join(job.errors[-3:]),
                )
            )
            return
        if len(job.tried) >= len(self._pool.endpoints):
            job.tried = [url]  # every endpoint failed it once: try again, elsewhere first
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (job.attempts - 1))
        self._loop.call_later(delay * random.uniform(0.5, 1.0), self._requeue, job)

    def _requeue(self, job: _Job) -> None:
        self._pending.appendleft(job)
        self._pump()

    def _finish(self, result: Result) -> None:
        self._done.put(result)

    def _fail_run(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message  # the worker's next poll() raises it

    def _schedule_recheck(self, state: EndpointState) -> None:
        self._loop.create_task(self._recheck(state))

    async def _recheck(self, state: EndpointState) -> None:
        """Health-check an ejected endpoint; back in rotation when it answers."""
        if state.in_rotation or state.retired or self._loop.is_closed():
            return
        healthy = await healthy_async(self._session, state.url, self._probe_timeout)
        if healthy:
            self._pool.restore(state)
            self._pump()
        else:
            delay = self._pool.next_recheck_delay(state)
            self._loop.call_later(delay, self._schedule_recheck, state)

    def _watch(self) -> None:
        """Once a second: follow the registry, and fail the run when nothing has answered
        for too long (rather than hang until walltime)."""
        self._follow_registry()
        busy = bool(self._pending) or any(s.outstanding for s in self._pool.endpoints.values())
        if busy and not self._pool.any_usable():
            now = time.monotonic()
            self._down_since = self._down_since or now
            if now - self._down_since > self._spec.all_down_s:
                errors = "; ".join(
                    f"{s.url}: {s.last_error or s.url}" for s in self._pool.endpoints.values()
                )
                self._fail_run(
                    f"no endpoint has answered for {self._spec.all_down_s:.0f}s ({errors}); "
                    "committed work is kept: restart the servers and rerun to resume"
                )
                return
        else:
            self._down_since = None
        self._loop.call_later(WATCH_INTERVAL_S, self._watch)

    def _registry_stat(self) -> float | None:
        if not self._setup.registry:
            return None
        try:
            return Path(self._setup.registry).stat().st_mtime
        except OSError:
            return None

    def _follow_registry(self) -> None:
        """Servers that joined, died or came back since the dispatch started."""
        mtime = self._registry_stat()
        if mtime is None or mtime == self._registry_mtime or not self._setup.registry:
            return
        self._registry_mtime = mtime
        from hpcinfer.core.endpoints_registry import RegistryError, read_registry, usable

        try:
            entries = read_registry(Path(self._setup.registry))
        except RegistryError:
            return  # being replaced: read on the next tick
        live = {e.url for e in usable(entries)}
        for entry in entries:
            if entry.url in live:
                self._pool.add(entry.url, self._setup.model or entry.model)
            else:
                self._pool.retire(entry.url)
        self._pump()

    async def _shutdown(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            if task is not asyncio.current_task():
                task.cancel()
        await self._session.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
