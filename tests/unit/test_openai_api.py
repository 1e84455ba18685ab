"""The dispatcher's side of the wire format: a record's request, a stream's Result fields."""

from __future__ import annotations

import json

import pytest

from hpcinfer.core.openai_wire import StreamError
from hpcinfer.engines.openai_api import RequestRejected, StreamResult, api_for, record_body
from hpcinfer.records import Record
from hpcinfer.spec import SamplingSpec


def _record(**kw: object) -> Record:
    return Record(id="r1", source="p.txt", line=3, **kw)  # type: ignore[arg-type]


def _data(event: object) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def test_completion_body_sends_only_set_vllm_extensions() -> None:
    body = record_body(_record(prompt="hi"), "completions", "tiny", SamplingSpec(max_tokens=7))
    assert body["prompt"] == "hi" and body["max_tokens"] == 7 and body["model"] == "tiny"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "top_p" in body and "temperature" in body
    assert not {"top_k", "ignore_eos", "min_tokens", "seed", "stop"} & set(body)
    sampling = SamplingSpec(top_k=5, ignore_eos=True, min_tokens=2, seed=1, stop=["\n"])
    body = record_body(_record(prompt="hi", max_tokens=3), "completions", "m", sampling)
    assert body["max_tokens"] == 3  # the record's own budget wins
    assert body["top_k"] == 5 and body["ignore_eos"] and body["min_tokens"] == 2
    assert body["seed"] == 1 and body["stop"] == ["\n"]


def test_chat_for_messages_or_when_asked() -> None:
    messages = [{"role": "user", "content": "hello"}]
    assert api_for(_record(messages=messages), "auto") == "chat"
    assert api_for(_record(prompt="x"), "auto") == "completions"
    assert api_for(_record(prompt="x"), "chat") == "chat"
    body = record_body(_record(prompt="x"), "chat", "m", SamplingSpec())
    assert body["messages"] == [{"role": "user", "content": "x"}] and "prompt" not in body
    body = record_body(_record(messages=messages), "chat", "m", SamplingSpec())
    assert body["messages"] == messages


def test_a_whole_completion_stream_read_in_odd_pieces() -> None:
    raw = b"".join(
        [
            _data({"choices": [{"text": "Hel", "finish_reason": None}]}),
            b": keep-alive\n\n",
            _data({"choices": [{"text": "lo", "finish_reason": "length"}]}),
            _data({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}),
            b"data: [DONE]\n\n",
        ]
    )
    state = StreamResult()
    line_end = raw.index(b"\n") + 1
    firsts = [state.feed(raw[:9]), state.feed(raw[9:line_end]), state.feed(raw[line_end:])]
    assert firsts == [False, True, False]  # the first token completes in the second read
    state.finish()
    assert (state.text, state.finish_reason, state.chunks) == ("Hello", "length", 2)
    assert (state.prompt_tokens, state.output_tokens) == (4, 2)


def test_chat_deltas() -> None:
    state = StreamResult()
    state.feed(_data({"choices": [{"delta": {"role": "assistant"}}]}))
    assert not state.first_token  # a role-only delta carries no token
    assert state.feed(_data({"choices": [{"delta": {"content": "Hi"}}]}))
    state.feed(_data({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    state.feed(b"data: [DONE]")  # the last line may come without its newline
    state.finish()
    assert state.text == "Hi" and state.finish_reason == "stop"


@pytest.mark.parametrize(
    "line",
    [
        b"data: {not json\n",
        b"event: ping\n",
        b'data: {"error": {"message": "boom"}}\n',
        b"data: 3\n",
        b'data: {"choices": [{"text": 5}]}\n',
    ],
)
def test_malformed_lines_are_retryable_errors(line: bytes) -> None:
    with pytest.raises(StreamError):
        StreamResult().feed(line)


def test_a_truncated_or_unfinished_stream_is_never_kept() -> None:
    state = StreamResult()
    state.feed(_data({"choices": [{"text": "half"}]}))
    with pytest.raises(StreamError, match=r"after 1 token chunk\(s\) \(truncated\)"):
        state.finish()
    state = StreamResult()
    state.feed(_data({"choices": [{"text": "all"}]}) + b"data: [DONE]\n")
    with pytest.raises(StreamError, match="without a finish_reason"):
        state.finish()
    assert issubclass(RequestRejected, Exception)


def test_record_sampling_fields_reach_the_server_body() -> None:
    record = Record(
        "r", "in.jsonl", 1, prompt="p", max_tokens=7,
        sampling={"temperature": 0.0, "seed": 3, "json_schema": {"type": "object"}, "lora": "sql"},
    )  # fmt: skip
    body = record_body(record, "completions", "base", SamplingSpec(temperature=0.8))
    assert body["temperature"] == 0.0 and body["seed"] == 3 and body["max_tokens"] == 7
    assert body["structured_outputs"] == {"json": {"type": "object"}}
    assert body["model"] == "sql"  # the adapter's served name
    for fields in ({"n": 2}, {"logprobs": 0}):
        asking = Record("r", "in.jsonl", 1, prompt="p", sampling=fields)
        with pytest.raises(RequestRejected, match="offline engine only; run this input with"):
            record_body(asking, "completions", "base", SamplingSpec())
