"""A fast OpenAI-compatible streaming server that does no compute, with injectable faults.

Why: a client (hpcinfer's dispatcher, `vllm bench serve`) has to be tested against exact
token counts and against servers that fail in every way a real fleet does (500s, garbage
mid-stream, connections cut, requests that never return), and benchmarked without a model
being the bottleneck. A real vLLM server gives neither: its outputs are not controllable and
its faults are not reproducible. This one answers in vLLM's exact wire format (checked
against vLLM 0.32's `/v1/completions` and `/v1/chat/completions`), generates exactly the
request's `max_tokens` (" tok0 tok1 ..."), counts a prompt's tokens as its
whitespace-separated words (a prompt of token ids, as vLLM accepts, as its length), answers
`n` samples and log-probabilities as vLLM does (`testing.stub_samples`), checks
`structured_outputs` as vLLM does (one constraint), and fails on purpose when told to.

Its timing is exact, so a benchmark's figures can be checked against it: token k of a request
goes out at arrival + ttft + k * itl, on absolute deadlines from the request's arrival (never
by adding up sleeps, whose errors would accumulate), woken by a timerfd (`bench.pacer`), not
by asyncio's millisecond timers. In chat streams the role chunk goes with the first token, as
vLLM sends it.

Run it in-process (tests):

    with StubServer(ttft_s=0.05, itl_s=0.01, faults=["http500@n=1"]) as stub:
        ... talk to stub.url ...; stub.stats()["faults"]["http500"] == 1

or as its own process (benchmarks, e.g. pinned to a core with taskset); it prints its URL
on a line of its own once it is listening:

    python -m hpcinfer.testing.stub_server --port 0 --ttft-ms 50 --itl-ms 10 \
        --fault 'truncate:3@p=0.1' --seed 7

Faults (`--fault`, repeatable; the first rule that matches a request wins), `MODE[:K][@WHEN]`:

- `http500`: status 500 with vLLM's JSON error body;
- `malformed`: a `data: {not json` event after K events (default 1), then the rest of the
  stream as usual (non-streaming: a 200 whose body is not JSON);
- `truncate`: the connection is closed after K events (default 1), without `[DONE]`
  (non-streaming: after part of the body);
- `hang`: the request is read and never answered (until the client gives up or the server
  stops), to test client timeouts;
- `drop`: the connection is closed before any response.

WHEN picks the requests by their arrival number n (1, 2, ... over the generation endpoints,
counted after authentication and body validation): `n=1,3,5-7`, `every=K` (n = K, 2K, ...),
`p=0.1` (a deterministic draw from `--seed` and n, so a rerun fails the same request
numbers); no WHEN means every request. Prompts can also ask for faults themselves, which
keeps a test's expectations independent of arrival order:

- `FAIL_ALWAYS` in a prompt: every attempt gets http500 (`FAIL_ALWAYS:truncate` picks the
  mode), so only that record should end as an error row after the client's retries;
- `FAIL_ONCE:<id>`: only the first attempt with that id fails; `FAIL_N:<k>:<id>` the first
  k attempts (either takes `:<mode>` after the id).

`GET /stats` (and `StubServer.stats()`) returns the counters as JSON: requests numbered,
completed, failed per mode, triggers hit, attempts per trigger id, 401s, 400s, client
disconnects, tokens. `GET /metrics` has vLLM's Prometheus names for the same counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard, TypeVar

from aiohttp import web

from hpcinfer.bench.pacer import Pacer
from hpcinfer.testing import stub_samples
from hpcinfer.testing.stub_samples import Sampling

MODES = ("http500", "malformed", "truncate", "hang", "drop")
HTTP500, MALFORMED, TRUNCATE, HANG, DROP = MODES

_T = TypeVar("_T")
_COMPLETIONS = "completions"
_CHAT = "chat"
_MALFORMED_EVENT = b"data: {not json\n\n"
_DONE_EVENT = b"data: [DONE]\n\n"
_MODE_ALT = "|".join(MODES)
_FAIL_ALWAYS = re.compile(rf"\bFAIL_ALWAYS(?::({_MODE_ALT}))?\b")
_FAIL_ONCE = re.compile(rf"\bFAIL_ONCE:([A-Za-z0-9_.\-]+)(?::({_MODE_ALT}))?")
_FAIL_N = re.compile(rf"\bFAIL_N:(\d+):([A-Za-z0-9_.\-]+)(?::({_MODE_ALT}))?")


class FaultSpecError(ValueError):
    """A `--fault` spec cannot be parsed; the message shows the grammar."""


_GRAMMAR = (
    "MODE[:K][@WHEN] with MODE one of " + ", ".join(MODES) + " and WHEN one of "
    "n=1,3,5-7 | every=K | p=0.1 (e.g. 'truncate:2@every=10')"
)


@dataclass(frozen=True)
class Fault:
    """One fault rule: which requests (by arrival number) fail, and how.

    `chunks` is K of `truncate` and `malformed`: the SSE events sent before the connection is
    cut or the bad event is sent. Exactly one of `requests`, `every`, `probability` may be
    set; none means every request.
    """

    mode: str
    chunks: int = 1
    requests: frozenset[int] = frozenset()
    every: int | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FaultSpecError(f"unknown fault mode {self.mode!r}: use {_GRAMMAR}")
        if self.chunks < 0:
            raise FaultSpecError(f"fault {self.mode}: K must be >= 0, got {self.chunks}")
        chosen = sum((bool(self.requests), self.every is not None, self.probability is not None))
        if chosen > 1:
            raise FaultSpecError("a fault takes one of n=, every=, p=, not several")
        if self.every is not None and self.every < 1:
            raise FaultSpecError(f"every= must be >= 1, got {self.every}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise FaultSpecError(f"p= must be within [0, 1], got {self.probability}")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse `MODE[:K][@WHEN]` (see the module docstring)."""
        head, _, when = text.strip().partition("@")
        mode, _, k = head.partition(":")
        try:
            chunks = int(k) if k else 1
        except ValueError:
            raise FaultSpecError(f"bad K in fault {text!r}: use {_GRAMMAR}") from None
        if not when:
            return cls(mode, chunks)
        key, eq, value = when.partition("=")
        try:
            if eq and key == "n":
                return cls(mode, chunks, requests=frozenset(_parse_numbers(value)))
            if eq and key == "every":
                return cls(mode, chunks, every=int(value))
            if eq and key == "p":
                return cls(mode, chunks, probability=float(value))
        except ValueError:
            raise FaultSpecError(f"bad WHEN in fault {text!r}: use {_GRAMMAR}") from None
        raise FaultSpecError(f"bad WHEN in fault {text!r}: use {_GRAMMAR}")

    def applies(self, n: int, seed: int, rule: int) -> bool:
        """Does this rule (number `rule` in its list) hit request number `n`?

        Probabilities are drawn from (seed, rule, n), not from a shared random stream, so the
        same request numbers fail in every run whatever the other rules did.
        """
        if self.requests:
            return n in self.requests
        if self.every is not None:
            return n % self.every == 0
        if self.probability is not None:
            return random.Random(f"{seed}:{rule}:{n}").random() < self.probability
        return True


def _parse_numbers(text: str) -> Iterable[int]:
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if dash:
            yield from range(int(low), int(high) + 1)
        else:
            yield int(low)


@dataclass(frozen=True)
class StubConfig:
    """What the stub serves and how it behaves (the constructor and CLI knobs)."""

    model: str = "tiny"
    ttft_s: float = 0.0
    itl_s: float = 0.0
    api_key: str | None = None
    faults: tuple[Fault, ...] = ()
    seed: int = 0
    default_max_tokens: int = 16
    accept_any_model: bool = False
    keep_bodies: bool = False
    """Keep every generation request's JSON body (`StubServer.bodies()`), for tests of what
    a client sends; off by default, so a long benchmark does not hold them all."""
    capacity: int | None = None
    """Requests answered at once (vLLM's --max-num-seqs); later ones wait for a slot and
    their tokens count from when they get it, so a load above capacity queues. None: no
    limit."""
    max_model_len: int = 1_000_000
    """The context length /v1/models reports (vLLM's `max_model_len`)."""
    answer_cap: int | None = None
    """Answer at most this many tokens whatever `max_tokens` asks (a server that stops
    early, ignoring ignore_eos and min_tokens); usage then counts what was sent."""

    @staticmethod
    def faults_from(specs: Iterable[Fault | str]) -> tuple[Fault, ...]:
        return tuple(s if isinstance(s, Fault) else Fault.parse(s) for s in specs)


@dataclass
class _Stats:
    """Counters, only ever touched on the server's event loop."""

    requests: int = 0
    ok: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    triggers: dict[str, int] = field(
        default_factory=lambda: {"FAIL_ALWAYS": 0, "FAIL_ONCE": 0, "FAIL_N": 0}
    )
    attempts: dict[str, int] = field(default_factory=dict)
    by_api: dict[str, int] = field(default_factory=lambda: {_COMPLETIONS: 0, _CHAT: 0})
    unauthorized: int = 0
    bad_request: int = 0
    client_disconnects: int = 0
    running: int = 0
    max_running: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": sum(self.faults.values()),
            "faults": dict(self.faults),
            "triggers": dict(self.triggers),
            "attempts": dict(self.attempts),
            "by_api": dict(self.by_api),
            "unauthorized": self.unauthorized,
            "bad_request": self.bad_request,
            "client_disconnects": self.client_disconnects,
            "running": self.running,
            "max_running": self.max_running,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class _BadRequest(Exception):
    """The request body is unusable; answered with a 400 like vLLM's."""


@dataclass(frozen=True)
class _Request:
    api: str
    text: str  # the prompt, or all chat message contents joined (for triggers); '' for ids
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def completion_tokens(self) -> int:
        return self.max_tokens * self.sampling.n


def _error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _message_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _token_ids(prompt: Any) -> TypeGuard[list[int]]:
    """A prompt given as token ids: a non-empty list of non-negative ints."""
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    )


def _parse_request(api: str, body: Any, default_max_tokens: int) -> _Request:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    if api == _COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one
        if _token_ids(prompt):
            text, prompt_tokens = "", len(prompt)
        elif isinstance(prompt, str):
            text, prompt_tokens = prompt, len(prompt.split())
        else:
            raise _BadRequest(
                "'prompt' must be a string or a non-empty list of token ids (the stub serves "
                "one prompt a request)"
            )
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty list")
        text = " ".join(_message_text(m.get("content")) for m in messages if isinstance(m, dict))
        prompt_tokens = len(text.split())
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens", default_max_tokens)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _BadRequest(f"'max_tokens' must be an integer >= 1, got {max_tokens!r}")
    try:
        sampling = stub_samples.parse_sampling(api == _CHAT, body)
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None
    options = body.get("stream_options") or {}
    return _Request(
        api=api,
        text=text,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        sampling=sampling,
    )


class _Encoder:
    """Builds one response's bytes in vLLM's format without a json.dumps per token.

    The constant parts of each event are serialized once per request; token text is ASCII
    (" tok17") and needs no escaping. The point is a server that stays far ahead of any
    client it is benchmarking, on one core.
    """

    def __init__(self, api: str, model: str) -> None:
        self.api = api
        self.model = model
        self.created = int(time.time())
        kind = "cmpl" if api == _COMPLETIONS else "chatcmpl"
        self.id = f"{kind}-{uuid.uuid4().hex[:16]}"
        obj = "text_completion" if api == _COMPLETIONS else "chat.completion.chunk"
        self.head = (
            f'{{"id":"{self.id}","object":"{obj}","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":'
        )

    @staticmethod
    def token(i: int) -> str:
        return f" tok{i}"

    def token_event(self, i: int, last: bool) -> bytes:
        finish = '"length"' if last else "null"
        if self.api == _COMPLETIONS:
            choice = (
                f'{{"index":0,"text":"{self.token(i)}","logprobs":null,'
                f'"finish_reason":{finish},"stop_reason":null}}'
            )
        else:
            choice = (
                f'{{"index":0,"delta":{{"content":"{self.token(i)}"}},"logprobs":null,'
                f'"finish_reason":{finish}}}'
            )
        return f"data: {self.head}[{choice}]}}\n\n".encode()

    def role_event(self) -> bytes:
        choice = (
            '{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}'
        )
        return f"data: {self.head}[{choice}]}}\n\n".encode()

    @staticmethod
    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }

    def usage_event(self, prompt: int, completion: int) -> bytes:
        usage = json.dumps(self.usage(prompt, completion), separators=(",", ":"))
        return f'data: {self.head}[],"usage":{usage}}}\n\n'.encode()

    def full_body(self, prompt: int, max_tokens: int, sampling: Sampling) -> bytes:
        body = {
            "id": self.id,
            "object": "text_completion" if self.api == _COMPLETIONS else "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": stub_samples.whole_choices(max_tokens, sampling),
            "usage": self.usage(prompt, max_tokens * sampling.n),
        }
        return json.dumps(body, separators=(",", ":")).encode()


class _Stub:
    """The request handlers and their state; one per server."""

    def __init__(self, config: StubConfig) -> None:
        """Made on the server's running loop (the pacer's timer is registered with it)."""
        self.config = config
        self.stats = _Stats()
        self.stopping = asyncio.Event()
        self.gate = asyncio.Event()  # cleared: requests are counted as running, then held
        self.gate.set()
        self.slots = asyncio.Semaphore(config.capacity) if config.capacity else None
        self.waiting = 0
        self.pacer = Pacer()
        self.arrivals: dict[Any, float] = {}  # connection handler -> its latest bytes' arrival
        self.bodies: list[Any] = []  # with config.keep_bodies: each request body, as received
        self._auth = f"Bearer {config.api_key}" if config.api_key else None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return self._auth is None or request.headers.get("Authorization") == self._auth

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.stats.unauthorized += 1
            return web.json_response({"error": "Unauthorized"}, status=401)
        card = {
            "id": self.config.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.config.model,
            "parent": None,
            "max_model_len": self.config.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'{{engine="0",model_name={json.dumps(self.config.model)}}}'
        rows = [
            ("num_requests_running", "gauge", "Requests being answered.", self.stats.running),
            ("num_requests_waiting", "gauge", "Requests waiting for a slot (--capacity).",
             self.waiting),
            ("prompt_tokens_total", "counter", "Prompt tokens of answered requests.",
             self.stats.prompt_tokens),
            ("generation_tokens_total", "counter", "Tokens generated.",
             self.stats.completion_tokens),
        ]  # fmt: skip
        lines: list[str] = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP vllm:{name} {help_text}",
                f"# TYPE vllm:{name} {kind}",
                f"vllm:{name}{labels} {float(value)}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.snapshot())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _COMPLETIONS)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _CHAT)

    def _fault_for(self, req: _Request, n: int) -> Fault | None:
        """The fault for this request: a prompt trigger first, then the rules in order."""
        text = req.text
        if "FAIL_" in text:
            trigger = self._trigger(text)
            if trigger is not None:
                return trigger
        for rule, fault in enumerate(self.config.faults):
            if fault.applies(n, self.config.seed, rule):
                return fault
        return None

    def _trigger(self, text: str) -> Fault | None:
        stats = self.stats
        if match := _FAIL_ALWAYS.search(text):
            stats.triggers["FAIL_ALWAYS"] += 1
            stats.attempts["FAIL_ALWAYS"] = stats.attempts.get("FAIL_ALWAYS", 0) + 1
            return Fault(match.group(1) or HTTP500)
        if match := _FAIL_N.search(text):
            name, failures = "FAIL_N", int(match.group(1))
            ident, mode = match.group(2), match.group(3)
        elif match := _FAIL_ONCE.search(text):
            name, failures = "FAIL_ONCE", 1
            ident, mode = match.group(1), match.group(2)
        else:
            return None
        attempt = stats.attempts.get(ident, 0) + 1
        stats.attempts[ident] = attempt
        if attempt > failures:
            return None
        stats.triggers[name] += 1
        return Fault(mode or HTTP500)

    async def _generate(self, request: web.Request, api: str) -> web.StreamResponse:
        # every token deadline of this request counts from its arrival on the socket
        arrival = min(self.arrivals.get(request.protocol, math.inf), time.monotonic())
        stats = self.stats
        if not self._authorized(request):
            stats.unauthorized += 1
            return web.json_response({"error": "Unauthorized"}, status=401)
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            stats.bad_request += 1
            return web.json_response(
                _error_body("the request body is not JSON", "BadRequestError", 400), status=400
            )
        if self.config.keep_bodies:
            self.bodies.append(body)
        try:
            req = _parse_request(api, body, self.config.default_max_tokens)
        except _BadRequest as exc:
            stats.bad_request += 1
            return web.json_response(_error_body(str(exc), "BadRequestError", 400), status=400)
        cap = self.config.answer_cap
        if cap is not None and req.max_tokens > cap:
            req = dataclasses.replace(req, max_tokens=cap)
        model = body.get("model")
        if model is not None and model != self.config.model and not self.config.accept_any_model:
            stats.bad_request += 1
            return web.json_response(
                _error_body(
                    f"The model `{model}` does not exist. Valid aliases: {self.config.model}.",
                    "NotFoundError",
                    404,
                ),
                status=404,
            )
        stats.requests += 1
        stats.by_api[api] += 1
        n = stats.requests
        fault = self._fault_for(req, n)
        stats.running += 1
        stats.max_running = max(stats.max_running, stats.running)
        try:
            if not self.gate.is_set():
                await self.gate.wait()
                arrival = time.monotonic()  # its tokens are timed from its release
            if self.slots is None:
                return await self._answer(request, req, fault, n, arrival)
            return await self._answer_in_slot(request, req, fault, n, arrival)
        except (ConnectionError, asyncio.CancelledError):
            stats.client_disconnects += 1
            raise
        finally:
            stats.running -= 1

    async def _answer_in_slot(
        self, request: web.Request, req: _Request, fault: Fault | None, n: int, arrival: float
    ) -> web.StreamResponse:
        """Answer once one of the `capacity` slots is free, timed from then when it waited."""
        assert self.slots is not None
        if self.slots.locked():
            self.waiting += 1
            try:
                await self.slots.acquire()
            finally:
                self.waiting -= 1
            arrival = time.monotonic()
        else:
            await self.slots.acquire()
        try:
            return await self._answer(request, req, fault, n, arrival)
        finally:
            self.slots.release()

    async def _answer(
        self, request: web.Request, req: _Request, fault: Fault | None, n: int, arrival: float
    ) -> web.StreamResponse:
        mode = fault.mode if fault else None
        if mode is not None:
            self.stats.faults[mode] += 1
        if mode == HTTP500:
            message = f"stub fault: http500 on request {n}"
            return web.json_response(_error_body(message, "InternalServerError", 500), status=500)
        if mode == DROP:
            _close(request)
            return web.Response(status=500)  # never sent: the connection is gone
        if mode == HANG:
            await self.stopping.wait()
            _close(request)
            return web.Response(status=503)
        enc = _Encoder(req.api, self.config.model)
        if req.stream:
            resp = await self._stream(request, req, enc, fault, arrival)
        else:
            resp = await self._whole(request, req, enc, fault, arrival)
        if mode is None:
            self.stats.ok += 1
            self.stats.prompt_tokens += req.prompt_tokens
            self.stats.completion_tokens += req.completion_tokens
        return resp

    async def _whole(
        self,
        request: web.Request,
        req: _Request,
        enc: _Encoder,
        fault: Fault | None,
        arrival: float,
    ) -> web.StreamResponse:
        delay = self.config.ttft_s + self.config.itl_s * (req.max_tokens - 1)
        if delay > 0:
            await self.pacer.sleep_until(arrival + delay)
        if fault is not None and fault.mode == MALFORMED:
            return web.Response(body=b"{not json", content_type="application/json")
        body = enc.full_body(req.prompt_tokens, req.max_tokens, req.sampling)
        if fault is not None and fault.mode == TRUNCATE:
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            _close(request)
            return resp
        return web.Response(body=body, content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        req: _Request,
        enc: _Encoder,
        fault: Fault | None,
        arrival: float,
    ) -> web.StreamResponse:
        """Send the events at their deadlines; events due together go in one write.

        With ttft and itl at 0 the whole stream is one write, which keeps the stub cheap
        enough to measure a client's own ceiling; with delays each token is its own write
        at its own time, as from a real server. A deadline already past (the stub fell
        behind) is sent at once, and the next ones still keep to theirs.
        """
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"}
        )
        await resp.prepare(request)
        events = self._events(req, enc)
        truncated = fault is not None and fault.mode == TRUNCATE
        if fault is not None and fault.mode == MALFORMED:
            # Never after [DONE]: a client may stop reading there.
            at = min(fault.chunks, len(events) - 1)
            events.insert(at, (events[at][0], _MALFORMED_EVENT))
        elif truncated and fault is not None:
            del events[min(fault.chunks, len(events) - 1) :]  # [DONE] is never sent
        pending: list[bytes] = []
        sent_until = arrival
        for offset, event in events:
            due = arrival + offset
            if due > sent_until:
                if pending:
                    await resp.write(b"".join(pending))
                    pending.clear()
                await self.pacer.sleep_until(due)
                sent_until = due
            pending.append(event)
        if truncated:
            if pending:
                await resp.write(b"".join(pending))
            _close(request)
            return resp
        await resp.write_eof(b"".join(pending))
        return resp

    def _events(self, req: _Request, enc: _Encoder) -> list[tuple[float, bytes]]:
        """The whole stream as (seconds after arrival, event) pairs, as vLLM sends it: the
        chat role chunk with the first token, the usage chunk and [DONE] with the last."""
        ttft, itl = self.config.ttft_s, self.config.itl_s
        last = req.max_tokens - 1
        events: list[tuple[float, bytes]] = []
        sampling = req.sampling
        if sampling.plain:
            if req.api == _CHAT:
                events.append((ttft, enc.role_event()))
            events += [(ttft + i * itl, enc.token_event(i, i == last)) for i in range(last + 1)]
        else:  # each step answers every sample, one event each (vLLM's order)
            if req.api == _CHAT:
                events += [(ttft, stub_samples.role_event(enc.head, j)) for j in range(sampling.n)]
            events += [
                (ttft + i * itl, stub_samples.token_event(enc.head, i, j, i == last, sampling))
                for i in range(last + 1)
                for j in range(sampling.n)
            ]
        end = ttft + last * itl
        if req.include_usage:
            events.append((end, enc.usage_event(req.prompt_tokens, req.completion_tokens)))
        events.append((end, _DONE_EVENT))
        return events


def _close(request: web.Request) -> None:
    """Close the client's connection now (after what was written is flushed)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a cheaper server per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Stamped(asyncio.Protocol):
    """One connection, passed through to aiohttp's handler, noting when its latest bytes
    arrived: a request's deadlines count from the moment it reached the stub's socket, not
    from when aiohttp's parsing and task switches (about 0.5 ms on a slow machine) got it to
    the handler.

    The reads are stamped at once and handed to aiohttp later in the same loop iteration
    (the end and loss of the connection queued behind them, in order): when many requests
    arrive together (a fixed-concurrency client starting its next batch), each is stamped
    before any is parsed, so no request's deadlines wait on another's parsing."""

    def __init__(self, handler: Any, arrivals: dict[Any, float]) -> None:
        self.handler = handler
        self.arrivals = arrivals

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.arrivals[self.handler] = time.monotonic()
        self.loop.call_soon(self.handler.data_received, data)

    def eof_received(self) -> bool | None:
        self.loop.call_soon(self.handler.eof_received)
        return None  # as aiohttp's handler answers: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        self.arrivals.pop(self.handler, None)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class _StampingRunner(web.AppRunner):
    """An AppRunner whose sites make `_Stamped` connections (through the public `server`
    protocol factory that every site calls once per connection)."""

    def __init__(self, app: web.Application, arrivals: dict[Any, float], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._arrivals = arrivals

    @property
    def server(self) -> Any:
        server = super().server
        if server is None:
            return None
        arrivals = self._arrivals
        return lambda: _Stamped(server(), arrivals)


async def _start(stub: _Stub, host: str, port: int) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a handler stops when its client goes away (a streaming request
    # whose client timed out must not go on writing into a dead socket).
    runner = _StampingRunner(
        stub.app(),
        stub.arrivals,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


class StubServer:
    """The stub on a background thread with its own event loop, for tests.

    `port=0` picks a free port; `.url` and `.port` are valid once started (the context
    manager starts it). `.stats()` snapshots the counters from the server's own loop, so
    it never sees them half-updated.
    """

    def __init__(
        self,
        *,
        model: str = "tiny",
        ttft_s: float = 0.0,
        itl_s: float = 0.0,
        api_key: str | None = None,
        faults: Sequence[Fault | str] = (),
        seed: int = 0,
        default_max_tokens: int = 16,
        accept_any_model: bool = False,
        keep_bodies: bool = False,
        capacity: int | None = None,
        max_model_len: int = 1_000_000,
        answer_cap: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        held: bool = False,
    ) -> None:
        self.held = held  # hold every generation request until `release()`
        self.config = StubConfig(
            model=model,
            ttft_s=ttft_s,
            itl_s=itl_s,
            api_key=api_key,
            faults=StubConfig.faults_from(faults),
            seed=seed,
            default_max_tokens=default_max_tokens,
            accept_any_model=accept_any_model,
            keep_bodies=keep_bodies,
            capacity=capacity,
            max_model_len=max_model_len,
            answer_cap=answer_cap,
        )
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stub: _Stub | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._done: asyncio.Event | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the stub server is not started: use `with StubServer(...)`")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> StubServer:
        self._thread = threading.Thread(target=self._run, name="stub-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the stub server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"the stub server failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = self._loop = _new_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread just ends
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stub = _Stub(self.config)
        if self.held:
            self._stub.gate.clear()
        self._done = asyncio.Event()
        runner, self._port = await _start(self._stub, self.host, self._requested_port)
        self._ready.set()
        try:
            await self._done.wait()
        finally:
            self._stub.stopping.set()  # hung requests end; then the runner can close
            self._stub.gate.set()
            await runner.cleanup()
            self._stub.pacer.close()

    def stats(self) -> dict[str, Any]:
        """The counters (as `GET /stats` returns them)."""
        return self._read(lambda stub: stub.stats.snapshot())

    def bodies(self) -> list[Any]:
        """The generation requests' JSON bodies in arrival order (`keep_bodies=True`)."""
        return self._read(lambda stub: list(stub.bodies))

    def _read(self, read: Callable[[_Stub], _T]) -> _T:
        """`read(stub)` run on the server's own loop, so it never sees state half-updated."""
        loop, stub = self._loop, self._stub
        if loop is None or stub is None or loop.is_closed():
            raise RuntimeError("the stub server is not running")

        async def snapshot() -> _T:
            return read(stub)

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(timeout=10)

    def release(self) -> None:
        """Answer the held requests and every later one (a test holds work back with
        `StubServer(held=True)` until every client is at work, whatever order they start)."""
        loop, stub = self._loop, self._stub
        if loop is None or stub is None or loop.is_closed():
            raise RuntimeError("the stub server is not running")
        loop.call_soon_threadsafe(stub.gate.set)

    def stop(self, timeout: float = 10.0) -> None:
        loop, done, thread = self._loop, self._done, self._thread
        if loop is not None and done is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(done.set)
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(
    config: StubConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    on_listening: Callable[[str], None] | None = None,
    busy_poll: bool = False,
) -> None:
    """Serve in this process until SIGINT or SIGTERM (the subprocess form).

    `busy_poll` keeps the event loop polling instead of sleeping (one core at 100%): a
    sleeping process on a virtual machine can take 0.2-0.5 ms to be woken, by a request or
    by its own timer, and that would add to every TTFT it is meant to fix exactly. A test of
    a benchmark's exactness uses it; nothing else needs it.
    """

    async def main() -> None:
        stub = _Stub(config)
        runner, bound = await _start(stub, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_listening is not None:
            on_listening(f"http://{host}:{bound}")
        # what exists now lives as long as the server: keep it out of every collection, so a
        # full one (several ms on a slow core) does not stall the tokens it is timing
        gc.collect()
        gc.freeze()
        if busy_poll:
            _keep_polling(loop)
        try:
            await stop.wait()
        finally:
            stub.stopping.set()
            await runner.cleanup()
            stub.pacer.close()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(main())


def _keep_polling(loop: asyncio.AbstractEventLoop) -> None:
    """A callback that always reschedules itself: the loop never has nothing to do, so it
    polls its sockets and timers with a zero timeout instead of sleeping."""

    def again() -> None:
        loop.call_soon(again)

    loop.call_soon(again)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcinfer.testing.stub_server",
        description="OpenAI-compatible stub server (no compute, exact token counts, "
        "injectable faults). Prints its URL on a line of its own once listening.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port.")
    parser.add_argument("--model", default="tiny", help="Served model name.")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="Delay before token 1.")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="Delay between tokens.")
    parser.add_argument("--api-key", default=None, help="Require 'Authorization: Bearer KEY'.")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help=f"Repeatable: {_GRAMMAR}."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of p= fault draws.")
    parser.add_argument(
        "--default-max-tokens", type=int, default=16, help="Tokens when a request sets none."
    )
    parser.add_argument(
        "--accept-any-model", action="store_true", help="Answer whatever 'model' is asked for."
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        metavar="N",
        help="Answer at most N requests at once; the rest wait (a server that saturates).",
    )
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="Poll instead of sleeping (uses a whole core): every deadline met to a few µs, "
        "for tests of a client's exactness.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults = StubConfig.faults_from(args.fault)
    except FaultSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = StubConfig(
        model=args.model,
        ttft_s=args.ttft_ms / 1000.0,
        itl_s=args.itl_ms / 1000.0,
        api_key=args.api_key,
        faults=faults,
        seed=args.seed,
        default_max_tokens=args.default_max_tokens,
        accept_any_model=args.accept_any_model,
        capacity=args.capacity,
    )
    serve_forever(
        config,
        args.host,
        args.port,
        on_listening=lambda url: print(url, flush=True),
        busy_poll=args.busy_poll,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
