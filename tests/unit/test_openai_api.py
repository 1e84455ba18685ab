"""The dispatcher's side of the wire format: a record's request, a stream's Result fields."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from hpcinfer.core.openai_wire import PATHS, Api, StreamError
from hpcinfer.engines.openai_api import RequestRejected, StreamResult, api_for, record_body
from hpcinfer.records import Record, Result
from hpcinfer.spec import SamplingSpec
from hpcinfer.testing.stub_server import StubServer


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


@pytest.mark.parametrize(
    ("api", "top", "fields"),
    [
        ("completions", 3, {"n": 2, "logprobs": 3}),
        ("completions", 0, {"n": 2, "logprobs": 0}),
        # chat lists the sampled token among its top_logprobs: one more keeps the best `top`
        ("chat", 3, {"n": 2, "logprobs": True, "top_logprobs": 4}),
        ("chat", 0, {"n": 2, "logprobs": True, "top_logprobs": 0}),
        ("chat", 20, {"n": 2, "logprobs": True, "top_logprobs": 20}),  # vLLM's max_logprobs
    ],
)
def test_n_and_logprobs_as_each_api_asks(api: Api, top: int, fields: dict[str, object]) -> None:
    record = Record("r", "in.jsonl", 1, prompt="p", sampling={"n": 2, "logprobs": top})
    body = record_body(record, api, "m", SamplingSpec())
    assert {key: body.get(key) for key in fields} == fields


def _expected(tokens: int, sample: int, top: int, sampled_odd: float) -> list[dict[str, Any]]:
    """What the stub's made-up log-probabilities (`testing.stub_samples`) read as."""
    rows = []
    for i in range(tokens):
        token = f" tok{i}" if sample == 0 else f" s{sample}tok{i}"
        if i % 2 == 0:  # the sampled token is the best one
            ranked = [(token, -0.5)] + [(f" alt{r}", -0.5 * r) for r in range(2, top + 1)]
            chosen = -0.5
        else:  # just outside the best `top`
            ranked = [(f" alt{r}", -0.5 * r) for r in range(1, top + 1)]
            chosen = sampled_odd
        best = [{"token": t, "logprob": lp} for t, lp in ranked[:top]]
        rows.append({"token": token, "logprob": chosen, "top_logprobs": best})
    return rows


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("top", [0, 2])
def test_samples_and_logprobs_from_a_vllm_format_stream(api: Api, top: int) -> None:
    """n=2 with log-probabilities through the stub (vLLM's format): the offline row shape."""
    record = Record("r", "in.jsonl", 1, prompt="a b", max_tokens=3,
                    sampling={"n": 2, "logprobs": top})  # fmt: skip
    body = record_body(record, api, "tiny", SamplingSpec())
    with StubServer() as stub:
        request = urllib.request.Request(
            stub.url + PATHS[api], json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
    state = StreamResult.for_record(record)
    for start in range(0, len(raw), 37):  # reads that end anywhere
        state.feed(raw[start : start + 37])
    state.finish()
    result = Result(id="r", text=state.text, output_tokens=state.output_tokens)
    state.fill(result)
    assert result.texts == [" tok0 tok1 tok2", " s1tok0 s1tok1 s1tok2"]
    assert result.text == result.texts[0] and result.output_tokens == 6
    assert result.finish_reasons == ["length", "length"]
    asked = top + 1 if api == "chat" and top else top  # the rank just outside what was asked
    odd = -0.5 * (asked + 1)
    assert result.logprobs == [_expected(3, 0, top, odd), _expected(3, 1, top, odd)]


def test_every_sample_must_finish_and_indexes_must_fit() -> None:
    state = StreamResult(samples=2)
    state.feed(_data({"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}))
    state.feed(_data({"choices": [{"index": 1, "text": "b"}]}) + b"data: [DONE]\n")
    with pytest.raises(StreamError, match=r"without a finish_reason for sample\(s\) \[1\]"):
        state.finish()
    with pytest.raises(StreamError, match="choice index 2 in an answer of 2 sample"):
        StreamResult(samples=2).feed(_data({"choices": [{"index": 2, "text": "c"}]}))
    malformed = {"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": ["a"]}}]}
    with pytest.raises(StreamError, match="malformed logprobs"):
        StreamResult(top_logprobs=1).feed(_data(malformed))
