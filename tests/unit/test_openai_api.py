"""The OpenAI wire format: request bodies and every way a stream can go wrong."""

from __future__ import annotations

import json

import pytest

from hpcinfer.engines.openai_api import (
    RequestRejected,
    StreamError,
    StreamResult,
    api_for,
    check_complete,
    error_text,
    feed_line,
    request_body,
    retryable_status,
)
from hpcinfer.records import Record
from hpcinfer.spec import SamplingSpec


def _record(**kw: object) -> Record:
    return Record(id="r1", source="p.txt", line=3, **kw)  # type: ignore[arg-type]


def _data(event: object) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n"


def test_completion_body_sends_only_set_vllm_extensions() -> None:
    body = request_body(_record(prompt="hi"), "completions", "tiny", SamplingSpec(max_tokens=7))
    assert body["prompt"] == "hi" and body["max_tokens"] == 7 and body["model"] == "tiny"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert not {"top_k", "ignore_eos", "min_tokens", "seed", "stop"} & set(body)
    sampling = SamplingSpec(top_k=5, ignore_eos=True, min_tokens=2, seed=1, stop=["\n"])
    body = request_body(_record(prompt="hi", max_tokens=3), "completions", "m", sampling)
    assert body["max_tokens"] == 3  # the record's own budget wins
    assert body["top_k"] == 5 and body["ignore_eos"] and body["min_tokens"] == 2
    assert body["seed"] == 1 and body["stop"] == ["\n"]


def test_chat_for_messages_or_when_asked() -> None:
    messages = [{"role": "user", "content": "hello"}]
    assert api_for(_record(messages=messages), "auto") == "chat"
    assert api_for(_record(prompt="x"), "auto") == "completions"
    assert api_for(_record(prompt="x"), "chat") == "chat"
    body = request_body(_record(prompt="x"), "chat", "m", SamplingSpec())
    assert body["messages"] == [{"role": "user", "content": "x"}] and "prompt" not in body


def test_a_whole_completion_stream() -> None:
    state = StreamResult()
    firsts = [
        feed_line(state, _data({"choices": [{"text": "Hel", "finish_reason": None}]})),
        feed_line(state, b"\n"),
        feed_line(state, b": keep-alive\n"),
        feed_line(state, _data({"choices": [{"text": "lo", "finish_reason": "length"}]})),
        feed_line(
            state, _data({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
        ),
        feed_line(state, b"data: [DONE]\n"),
    ]
    assert firsts == [True, False, False, False, False, False]
    check_complete(state)
    assert (state.text, state.finish_reason) == ("Hello", "length")
    assert (state.prompt_tokens, state.output_tokens) == (4, 2)


def test_chat_deltas() -> None:
    state = StreamResult()
    feed_line(state, _data({"choices": [{"delta": {"role": "assistant"}}]}))
    assert not state.first_token  # a role-only delta carries no token
    assert feed_line(state, _data({"choices": [{"delta": {"content": "Hi"}}]}))
    feed_line(state, _data({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    feed_line(state, b"data: [DONE]")
    check_complete(state)
    assert state.text == "Hi" and state.finish_reason == "stop"


@pytest.mark.parametrize(
    "line",
    [
        b"data: {not json\n",
        b"event: ping\n",
        b'data: {"error": {"message": "boom"}}\n',
        b"data: 3\n",
    ],
)
def test_malformed_lines_are_retryable_errors(line: bytes) -> None:
    with pytest.raises(StreamError):
        feed_line(StreamResult(), line)


def test_a_truncated_stream_is_never_kept() -> None:
    state = StreamResult()
    feed_line(state, _data({"choices": [{"text": "half"}]}))
    with pytest.raises(StreamError, match="truncated"):
        check_complete(state)


def test_error_text_and_retryable_statuses() -> None:
    assert error_text(400, b'{"error": {"message": "too long"}}') == "HTTP 400: too long"
    assert error_text(500, b"<html>oops") == "HTTP 500: <html>oops"
    assert [retryable_status(s) for s in (500, 503, 429, 408, 400, 404)] == [
        True, True, True, True, False, False
    ]  # fmt: skip
    assert issubclass(RequestRejected, Exception)
