"""The serving load generator against the in-process stub: every request timed and counted
exactly, concurrency limits respected, failures recorded (never retried); and the pacer that
sends on schedule, on both of its clock paths."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import pytest

from hpcinfer.bench import pacer as pacer_module
from hpcinfer.bench.arrivals import all_at_once, fixed_concurrency, fixed_rate
from hpcinfer.bench.dataset import BenchRequest, random_requests
from hpcinfer.bench.loadgen import LoadOptions, _Stream, base_url, request_body, run_load
from hpcinfer.bench.metrics import summarize
from hpcinfer.bench.pacer import Pacer
from hpcinfer.core.openai_wire import StreamError
from hpcinfer.testing.stub_server import StubServer

OPTIONS = LoadOptions(model="tiny")

# ------------------------------------------------------------------------------ the pacer


@pytest.mark.parametrize("use_timerfd", [True, False])
def test_pacer_fires_every_callback_in_due_order_never_early(use_timerfd: bool) -> None:
    async def main() -> tuple[str, list[tuple[int, float, float]]]:
        pacer = Pacer(use_timerfd=use_timerfd)
        fired: list[tuple[int, float, float]] = []
        done = asyncio.get_running_loop().create_future()
        start = time.monotonic() + 0.01
        dues = [start + 0.0005 * k for k in range(40)]
        order = list(range(40))
        random.Random(1).shuffle(order)  # added out of order: fired in time order

        def fire(k: int) -> None:
            fired.append((k, dues[k], time.monotonic()))
            if len(fired) == len(dues):
                done.set_result(None)

        for k in order:
            pacer.call_at(dues[k], fire, k)
        pacer.call_at(start - 1.0, lambda: None)  # already past: runs at once
        await asyncio.wait_for(done, 10)
        await pacer.sleep_until(time.monotonic() + 0.002)
        assert len(pacer) == 0
        pacer.close()
        return pacer.kind, fired

    kind, fired = asyncio.run(main())
    assert kind == ("timerfd" if use_timerfd else "spin")
    assert [k for k, _, _ in fired] == list(range(40))
    assert all(at >= due for _, due, at in fired)


def test_pacer_falls_back_when_there_is_no_timerfd(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoTimerFd:
        def __init__(self) -> None:
            raise OSError("timerfd is not available here")

    monkeypatch.setattr(pacer_module, "TimerFd", NoTimerFd)

    async def main() -> tuple[str, float, float]:
        pacer = Pacer()
        due = time.monotonic() + 0.005
        await pacer.sleep_until(due)
        woke = time.monotonic()
        pacer.close()
        return pacer.kind, due, woke

    kind, due, woke = asyncio.run(main())
    assert kind == "spin" and woke >= due


def test_a_failing_callback_does_not_stop_the_clock() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
        pacer = Pacer()
        now = time.monotonic()

        def boom() -> None:
            raise RuntimeError("boom")

        pacer.call_at(now + 0.001, boom)
        await pacer.sleep_until(now + 0.003)
        seen.append("woke")
        pacer.close()
        return seen

    assert asyncio.run(main()) == ["pacer callback failed", "woke"]


# ------------------------------------------------------------------------------ parsing


def _events(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


def test_stream_counts_chunks_as_vllm_does_without_the_chat_role_announcement() -> None:
    stream = _Stream()
    role = '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
    token = '{"choices":[{"index":0,"delta":{"content":" a"}}]}'
    empty = '{"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}'
    usage = '{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}'
    raw = _events(role, token, empty, token, usage, "[DONE]")
    # the second read starts mid-event: the event is complete (and timed) with that read
    cut = len(_events(role, token)) + 20
    stream.feed(raw[:cut], 1.0)
    stream.feed(raw[cut:], 2.0)
    stream.finish()
    assert stream.chunks == [1.0, 2.0, 2.0]  # role skipped; the empty-text step counts
    assert (stream.prompt_tokens, stream.output_tokens, stream.done) == (7, 3, True)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (_events('{"choices":[{"text":"a"}]}'), "truncated"),
        (_events("{not json"), "malformed JSON"),
        (b"event: x\n\n", "not an SSE data line"),
        (_events('{"error":{"message":"overloaded"}}'), "error event"),
        (_events("[DONE]", '{"choices":[{"text":"a"}]}'), r"data after \[DONE\]"),
    ],
)
def test_broken_streams_are_failures(raw: bytes, kind: str) -> None:
    stream = _Stream()
    with pytest.raises(StreamError, match=kind):
        stream.feed(raw, 1.0)
        stream.finish()


def test_request_bodies_and_urls() -> None:
    ids = BenchRequest(source="random:0", output_len=4, prompt=[1, 2, 3], prompt_len=3)
    body = request_body(ids, LoadOptions(model="m", extra_body={"top_p": 0.5}))
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 4
    assert body["ignore_eos"] is True and body["temperature"] == 0.0 and body["top_p"] == 0.5
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert not {"seed", "top_k", "stop"} & set(body)  # sent only when asked for
    sampled = request_body(ids, LoadOptions("m", seed=7, top_k=5, top_p=0.9, stop=("END",)))
    assert (sampled["seed"], sampled["top_k"], sampled["top_p"]) == (7, 5, 0.9)
    assert sampled["stop"] == ["END"]
    chat = request_body(
        BenchRequest(source="p.jsonl:2", output_len=2, prompt="hi"), LoadOptions("m", api="chat")
    )
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=r"random:0: a prompt of token ids cannot go to"):
        request_body(ids, LoadOptions("m", api="chat"))
    messages = BenchRequest(source="p.jsonl:3", output_len=2, messages=[{"role": "user"}])
    with pytest.raises(ValueError, match=r"p.jsonl:3: chat messages need the chat API"):
        request_body(messages, LoadOptions("m"))
    assert base_url("http://h:8000/v1/") == "http://h:8000"
    with pytest.raises(ValueError, match="not an http"):
        base_url("h:8000")
    assert "secret" not in repr(LoadOptions("m", api_key="secret"))


# ------------------------------------------------------------------------------ against the stub


def test_every_request_is_timed_with_exact_token_counts() -> None:
    requests = random_requests(24, input_len=8, output_len=5, vocab=100)
    schedule = fixed_rate(24, 400.0)
    progress: list[tuple[int, int]] = []
    with StubServer(itl_s=0.001) as stub:
        result = run_load(
            [stub.url + "/v1"], requests, schedule, OPTIONS, lambda d, t: progress.append((d, t))
        )
        stats = stub.stats()
    assert result.failed == 0 and result.errors == {}
    assert result.pacer in ("timerfd", "spin")
    assert progress[-1] == (24, 24)
    for offset, timing in zip(schedule.offsets_s, result.timings, strict=True):
        assert timing.ok and timing.prompt_tokens == 8 and timing.output_tokens == 5
        assert len(timing.chunk_times_s) == 5
        assert timing.scheduled_s == result.start_s + offset  # in request order
        assert timing.sent_s >= timing.scheduled_s
    assert stats["ok"] == 24 and stats["prompt_tokens"] == 24 * 8
    summary = summarize(result.timings, result.duration_s)
    assert summary["completed"] == 24 and summary["total_output_tokens"] == 120


def test_a_closed_loop_never_has_more_than_max_concurrency_in_flight() -> None:
    requests = random_requests(30, input_len=4, output_len=3, vocab=50)
    with StubServer(ttft_s=0.01, itl_s=0.002) as stub:
        result = run_load([stub.url], requests, fixed_concurrency(30, 4), OPTIONS)
        stats = stub.stats()
    assert result.failed == 0
    assert result.max_in_flight == 4 and stats["max_running"] == 4
    # a request's clock starts when it gets its slot, not at time 0
    later = sorted(t.scheduled_s for t in result.timings)[4:]
    assert all(s > result.start_s for s in later)


def test_an_open_loop_with_a_limit_queues_and_counts_the_wait() -> None:
    requests = random_requests(12, input_len=4, output_len=2, vocab=50)
    schedule = fixed_rate(12, 2000.0, max_concurrency=2)
    with StubServer(ttft_s=0.01) as stub:
        result = run_load([stub.url], requests, schedule, OPTIONS)
        stats = stub.stats()
    assert result.failed == 0 and result.max_in_flight == 2 and stats["max_running"] == 2
    for offset, timing in zip(schedule.offsets_s, result.timings, strict=True):
        assert timing.scheduled_s == result.start_s + offset  # the wait for a slot counts
    assert max(t.sent_s - t.scheduled_s for t in result.timings) > 0.01


def test_chat_requests_and_an_api_key() -> None:
    requests = [
        BenchRequest(source=f"p:{i}", output_len=3, messages=[{"role": "user", "content": "a b"}])
        for i in range(4)
    ]
    options = LoadOptions(model="tiny", api="chat", api_key="s3cret")
    with StubServer(api_key="s3cret") as stub:
        result = run_load([stub.url], requests, all_at_once(4), options)
        refused = run_load([stub.url], requests, all_at_once(4), LoadOptions("tiny", api="chat"))
    assert result.failed == 0
    assert all(t.output_tokens == 3 and len(t.chunk_times_s) == 3 for t in result.timings)
    assert all(t.prompt_tokens == 2 for t in result.timings)
    assert refused.failed == 4 and refused.errors == {"HTTP 401 Unauthorized": 4}
    assert all("s3cret" not in (t.error or "") for t in refused.timings)


def test_failures_are_recorded_and_counted_others_unaffected() -> None:
    requests = random_requests(8, input_len=4, output_len=4, vocab=50)
    faults = ["http500@n=2", "malformed:2@n=4", "truncate:2@n=6"]
    with StubServer(faults=faults) as stub:
        result = run_load([stub.url], requests, fixed_concurrency(8, 1), OPTIONS)
        stats = stub.stats()
    failed = [i for i, t in enumerate(result.timings) if not t.ok]
    assert failed == [1, 3, 5]
    assert stats["requests"] == 8  # never retried
    assert sum(result.errors.values()) == 3
    assert result.errors["HTTP 500 Internal Server Error"] == 1
    assert result.errors["malformed JSON in the stream"] == 1
    error = result.timings[1].error or ""
    assert error.startswith("random:1: http://127.0.0.1:") and "stub fault: http500" in error
    for i, timing in enumerate(result.timings):
        if i not in failed:
            assert timing.output_tokens == 4 and timing.prompt_tokens == 4


def test_timeouts_and_unreachable_servers_are_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening
    requests = random_requests(3, input_len=4, output_len=2, vocab=50)
    down = run_load([dead], requests, all_at_once(3), OPTIONS)
    assert down.failed == 3 and down.errors == {f"cannot connect to {dead}": 3}
    with StubServer(faults=["hang@n=1"]) as stub:
        hung = run_load(
            [stub.url], requests, fixed_concurrency(3, 1), LoadOptions("tiny", timeout_s=0.3)
        )
    assert [t.ok for t in hung.timings] == [False, True, True]
    assert hung.errors == {"no complete response within 0.3 s (timeout)": 1}


def test_requests_spread_over_endpoints() -> None:
    requests = random_requests(20, input_len=4, output_len=2, vocab=50)
    with StubServer(ttft_s=0.005) as a, StubServer(ttft_s=0.005) as b:
        result = run_load([a.url, b.url], requests, fixed_concurrency(20, 4), OPTIONS)
        counts = (a.stats()["ok"], b.stats()["ok"])
    assert result.failed == 0 and sum(counts) == 20 and min(counts) >= 8
    assert result.by_endpoint == {a.url: counts[0], b.url: counts[1]}


def test_inputs_that_do_not_fit_are_refused_before_sending() -> None:
    requests = random_requests(3, input_len=4, output_len=2, vocab=50)
    cases: list[tuple[Any, ...]] = [
        ([], requests, all_at_once(3), "no endpoints"),
        (["http://127.0.0.1:1"], requests, all_at_once(4), "3 requests but the schedule has 4"),
        (["127.0.0.1:1"], requests, all_at_once(3), "not an http"),
    ]
    for endpoints, reqs, schedule, message in cases:
        with pytest.raises(ValueError, match=message):
            run_load(endpoints, reqs, schedule, OPTIONS)
