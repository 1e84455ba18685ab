"""The shared OpenAI wire format: request bodies, and SSE streams as vLLM sends them, read in
pieces split anywhere, with every way a stream goes wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpcinfer.core.openai_wire import (
    PATHS,
    SseParser,
    StreamError,
    choice_text,
    error_text,
    first_choice,
    is_decode_step,
    request_body,
    retryable_status,
    usage_counts,
)

# vLLM 0.32's /v1/completions stream with stream_options.include_usage (ids shortened)
VLLM_COMPLETION = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null,'
    b'"stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null,'
    b'"stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"text":".","logprobs":null,"finish_reason":"length",'
    b'"stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny",'
    b'"choices":[],"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)
# and /v1/chat/completions: the role announcement, then content deltas
VLLM_CHAT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[],"usage":{"prompt_tokens":9,"total_tokens":10,"completion_tokens":1}}\n\n'
    b"data: [DONE]\n\n"
)


def _parse(pieces: list[bytes]) -> tuple[list[dict[str, Any]], SseParser]:
    parser = SseParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.finish(), parser


def _summary(events: list[dict[str, Any]]) -> tuple[str, int, list[Any], Any]:
    choices = [c for c in (first_choice(e) for e in events) if c is not None]
    text = "".join(choice_text(c) for c in choices)
    steps = sum(1 for c in choices if is_decode_step(c))
    finish = [c.get("finish_reason") for c in choices if c.get("finish_reason")]
    usage = [u for u in (usage_counts(e) for e in events) if u is not None]
    return text, steps, finish, usage


def test_a_vllm_completion_stream() -> None:
    events, parser = _parse([VLLM_COMPLETION])
    parser.check_done(0)
    # the empty-text event is a decode step; the usage-only event is not a choice
    assert _summary(events) == (" Paris.", 3, ["length"], [(5, 3)])


def test_a_vllm_chat_stream_does_not_count_the_role_announcement() -> None:
    events, parser = _parse([VLLM_CHAT])
    parser.check_done(0)
    assert _summary(events) == ("Hi", 1, ["stop"], [(9, 1)])


@pytest.mark.parametrize("raw", [VLLM_COMPLETION, VLLM_CHAT], ids=["completions", "chat"])
def test_reads_split_anywhere_give_the_same_events(raw: bytes) -> None:
    whole, _ = _parse([raw])
    for cut in range(1, len(raw)):  # mid-line, mid-event, between \n and \n, in [DONE]
        events, parser = _parse([raw[:cut], raw[cut:]])
        assert events == whole and parser.done, cut
    events, parser = _parse([raw[i : i + 1] for i in range(len(raw))])  # byte by byte
    assert events == whole and parser.done


def test_each_event_comes_out_of_the_read_that_ends_its_line() -> None:
    parser = SseParser()
    first, rest = VLLM_COMPLETION.split(b"\n\n", 1)
    assert parser.feed(first[:-1]) == []
    assert [choice_text(c) for c in map(first_choice, parser.feed(first[-1:] + b"\n"))] == [
        " Paris"
    ]  # fmt: skip
    assert len(parser.feed(b"\n" + rest)) == 3 and parser.done


def test_keep_alives_crlf_and_a_last_line_without_newline() -> None:
    raw = b': ping\r\n\r\ndata: {"choices":[{"text":"a"}]}\r\n\r\ndata: [DONE]'
    events, parser = _parse([raw])
    assert [choice_text(first_choice(e) or {}) for e in events] == ["a"]
    parser.check_done(1)


@pytest.mark.parametrize(
    ("raw", "kind", "detail"),
    [
        (b"data: {not json\n", "malformed JSON in the stream", "{not json"),
        (b"event: ping\n", "not an SSE data line", "event: ping"),
        (b"data: [1, 2]\n", "stream event is not an object", "[1, 2]"),
        (
            b'data: {"error": {"message": "overloaded", "code": 503}}\n',
            "error event in the stream",
            "error event: overloaded",
        ),
        (b'data: {"object": "error", "message": "boom"}\n', "error event", ""),
        (b'data: [DONE]\n\ndata: {"choices": []}\n', "data after [DONE]", '{"choices": []}'),
    ],
)
def test_broken_streams_raise_a_counted_kind_and_a_detail(
    raw: bytes, kind: str, detail: str
) -> None:
    if kind == "error event":  # vLLM's other error shape has no "error" key: a plain event
        assert SseParser().feed(raw)[0]["message"] == "boom"
        return
    with pytest.raises(StreamError) as caught:
        SseParser().feed(raw)
    assert caught.value.kind == kind and detail in caught.value.detail
    assert str(caught.value) == caught.value.detail


def test_a_cut_stream_fails_with_its_chunk_count() -> None:
    parser = SseParser()
    parser.feed(b'data: {"choices":[{"text":"a"}]}\n\n')
    assert parser.finish() == [] and not parser.done
    with pytest.raises(StreamError, match=r"after 1 token chunk\(s\) \(truncated\)") as caught:
        parser.check_done(1)
    assert caught.value.kind == "stream ended before [DONE] (truncated)"


def test_malformed_choices() -> None:
    with pytest.raises(StreamError, match="malformed choice"):
        first_choice({"choices": ["x"]})
    with pytest.raises(StreamError, match="token text is not a string"):
        choice_text({"text": 3})
    assert first_choice({"choices": []}) is None and usage_counts({"usage": None}) is None
    assert usage_counts({"usage": {"prompt_tokens": 2}}) == (2, None)


def test_bodies_for_completions_and_chat() -> None:
    body = request_body("completions", "m", max_tokens=4, prompt=[1, 2, 3])
    assert body == {
        "model": "m",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": [1, 2, 3],
    }
    body = request_body(
        "chat", "m", max_tokens=2, prompt="hi", temperature=0.0, top_p=1.0, seed=0,
        stop=["\n"], top_k=0, ignore_eos=True, min_tokens=0, extra={"top_p": 0.5, "n": 1},
    )  # fmt: skip
    assert body["messages"] == [{"role": "user", "content": "hi"}] and "prompt" not in body
    assert body["temperature"] == 0.0 and body["top_p"] == 0.5 and body["n"] == 1
    assert body["seed"] == 0 and body["stop"] == ["\n"] and body["ignore_eos"] is True
    assert "top_k" not in body and "min_tokens" not in body  # 0 means "not set"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]
    body = request_body("chat", "m", max_tokens=1, prompt="ignored", messages=messages)
    assert body["messages"] == messages
    json.dumps(body)  # a body is plain JSON
    with pytest.raises(ValueError, match="token ids cannot go to the chat API"):
        request_body("chat", "m", max_tokens=1, prompt=[1])
    with pytest.raises(ValueError, match="chat messages need the chat API"):
        request_body("completions", "m", max_tokens=1, messages=messages)
    assert PATHS == {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def test_error_text_and_retryable_statuses() -> None:
    assert error_text(400, b'{"error": {"message": "too long"}}') == "HTTP 400: too long"
    assert error_text(400, b'{"object": "error", "message": "bad"}') == "HTTP 400: bad"
    assert error_text(500, b"<html>oops") == "HTTP 500: <html>oops"
    assert [retryable_status(s) for s in (500, 503, 429, 408, 400, 404)] == [
        True, True, True, True, False, False
    ]  # fmt: skip
