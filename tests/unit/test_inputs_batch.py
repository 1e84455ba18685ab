"""OpenAI Batch files in and out, and per-record sampling fields checked when read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.inputs import read_records
from hpcinfer.inputs.sampling import SamplingFieldError, parse_sampling
from hpcinfer.outputs.batch_output import batch_line
from hpcinfer.records import Record, Result
from hpcinfer.run.rows import make_row


def batch_file(tmp_path: Path, *lines: Any, name: str = "batch.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def request(custom_id: str, url: str = "/v1/completions", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def read(tmp_path: Path, *lines: Any, **kwargs: Any) -> list[Record]:
    return list(read_records([batch_file(tmp_path, *lines)], cwd=tmp_path, **kwargs))


def test_batch_lines_are_detected_and_keep_custom_id_and_sampling(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    records = read(
        tmp_path,
        request("c1", model="gpt-x", prompt="Hi", temperature=0.2, n=2, logprobs=3, seed=7),
        request(
            "c2",
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "JSON please"}],
            max_completion_tokens=40,
            logprobs=True,
            top_logprobs=2,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        ),
        request("c3", prompt="pick", structured_outputs={"choice": ["yes", "no"]}, stop="\n"),
    )
    first, chat, choice = records
    assert (first.id, first.prompt, first.batch_url) == ("c1", "Hi", "/v1/completions")
    assert first.sampling == {"temperature": 0.2, "n": 2, "logprobs": 3, "seed": 7}
    assert chat.id == "c2" and chat.messages == [{"role": "user", "content": "JSON please"}]
    assert chat.max_tokens == 40
    assert chat.sampling == {"logprobs": 2, "json_schema": schema}
    assert choice.sampling == {"choice": ["yes", "no"], "stop": ["\n"]}
    assert all(r.error is None for r in records)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (request("x", "/v1/embeddings", input="a"), "url '/v1/embeddings' is not supported"),
        ({**request("x", prompt="a"), "method": "GET"}, "method 'GET' is not supported"),
        (request("", prompt="a"), "custom_id must be a non-empty string"),
        ({"custom_id": "x", "url": "/v1/completions", "body": "a"}, "body must be a JSON object"),
        (request("x", prompt=["a", "b"]), "body.prompt must be one string"),
        (request("x", "/v1/chat/completions", prompt="a"), "needs 'messages'"),
        (request("x", prompt="a", temperature=-1), "body.temperature=-1 is out of range"),
        (request("x", prompt="a", tools=[]), "body.tools is not supported"),
        (request("x", prompt="a", n=0), "body.n=0 is out of range; give a whole number from 1"),
        (request("x", prompt="a", logprobs=50), "body.logprobs=50 is out of range"),
    ],
)
def test_bad_batch_requests_are_error_rows_naming_the_field(
    tmp_path: Path, line: dict[str, Any], expected: str
) -> None:
    good = request("ok", prompt="fine")
    records = read(tmp_path, line, good)
    assert records[0].error is not None and expected in records[0].error
    assert records[0].line == 1 and records[1].error is None  # the next request still runs


def test_explicit_batch_format_refuses_a_plain_line(tmp_path: Path) -> None:
    records = read(tmp_path, {"prompt": "not a batch request"}, fmt="batch")
    assert records[0].error is not None and "custom_id" in records[0].error


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"temperature": "0.5", "top_k": "0", "max_tokens": "12"},
         {"temperature": 0.5, "top_k": 0, "max_tokens": 12}),
        ({"stop": '["a", "b"]', "logprobs": "true"}, {"stop": ["a", "b"], "logprobs": 0}),
        ({"json_schema": '{"type": "object"}', "n": 3.0},
         {"json_schema": {"type": "object"}, "n": 3}),
        ({"temperature": "", "seed": None, "lora": " sql "}, {"lora": "sql"}),
        ({"presence_penalty": -2, "frequency_penalty": 2},
         {"presence_penalty": -2.0, "frequency_penalty": 2.0}),
    ],
)  # fmt: skip
def test_sampling_fields_from_text_cells_and_json(
    values: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert parse_sampling(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"top_p": 0}, "top_p=0 is out of range; give a number in (0, 1]"),
        ({"temperature": "hot"}, "temperature='hot' is not a number"),
        ({"n": 1.5}, "n=1.5 is not a whole number"),
        ({"max_tokens": 0}, "max_tokens=0 is out of range; give a whole number >= 1"),
        ({"presence_penalty": 3}, "presence_penalty=3 is out of range; give a number in [-2, 2]"),
        ({"regex": "("}, "regex='(' does not compile"),
        ({"choice": "yes"}, "is not a choice list"),
        ({"json_schema": "[1]"}, "is not a JSON schema"),
        ({"regex": "a+", "choice": ["a"]}, "regex and choice are both set"),
        ({"chat_template": "{{ x }}"}, "chat_template is set on a record without chat messages"),
        ({"seed": True}, "seed=True is a boolean, not a number"),
    ],
)
def test_bad_sampling_values_name_field_and_range(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(SamplingFieldError) as caught:
        parse_sampling(values)
    assert expected in str(caught.value)


def test_jsonl_keys_and_csv_columns_become_record_sampling(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"prompt": "p", "temperature": 0, "n": 2, "max_tokens": 5, "topic": "t"}\n'
        '{"prompt": "q", "top_p": 7}\n',
        encoding="utf-8",
    )
    (tmp_path / "b.csv").write_text("prompt,seed,regex\nhello,4,[0-9]+\nbye,,\n", encoding="utf-8")
    rows = list(read_records([tmp_path / "a.jsonl", tmp_path / "b.csv"], cwd=tmp_path))
    assert rows[0].sampling == {"temperature": 0.0, "n": 2} and rows[0].max_tokens == 5
    assert rows[0].fields == {"temperature": 0, "n": 2, "max_tokens": 5, "topic": "t"}
    assert rows[1].error == (
        "a.jsonl:2: top_p=7 is out of range; give a number in (0, 1]; fix the value or remove "
        "it to use the job's sampling settings"
    )
    assert rows[2].sampling == {"seed": 4, "regex": "[0-9]+"}
    assert rows[3].sampling == {} and rows[3].error is None  # empty cells: the job's settings


def test_batch_output_round_trip(tmp_path: Path) -> None:
    """Batch file in -> rows -> Batch output lines: custom ids, every sample, logprobs, and
    an error row answered as a failed request."""
    records = read(
        tmp_path,
        request("c1", prompt="Hi", n=2, logprobs=1),
        request("c2", "/v1/chat/completions", messages=[{"role": "user", "content": "x"}]),
        request("c3", prompt="a", top_p=2),
    )
    token = {"token": " a", "logprob": -0.5, "top_logprobs": [{"token": " a", "logprob": -0.5}]}
    results = [
        Result("c1", text="A", finish_reason="length", prompt_tokens=2, output_tokens=2,
               texts=["A", "B"], finish_reasons=["length", "stop"],
               logprobs=[[token], [token]]),
        Result("c2", text='{"a": 1}', finish_reason="stop", prompt_tokens=5, output_tokens=4),
        Result.failed("c3", records[2].error or ""),
    ]  # fmt: skip
    lines = [
        batch_line(make_row(rec, res, worker=0, model="m"), created=1)
        for rec, res in zip(records, results, strict=True)
    ]
    completion = lines[0]["response"]["body"]
    assert lines[0]["custom_id"] == "c1" and lines[0]["error"] is None
    assert lines[0]["response"]["status_code"] == 200
    assert completion["object"] == "text_completion" and completion["model"] == "m"
    assert [c["text"] for c in completion["choices"]] == ["A", "B"]
    assert [c["finish_reason"] for c in completion["choices"]] == ["length", "stop"]
    assert completion["choices"][0]["logprobs"] == {
        "tokens": [" a"], "token_logprobs": [-0.5], "top_logprobs": [{" a": -0.5}],
        "text_offset": [0],
    }  # fmt: skip
    assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    chat = lines[1]["response"]["body"]
    assert chat["object"] == "chat.completion"
    assert chat["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": '{"a": 1}'},
         "logprobs": None, "finish_reason": "stop"}
    ]  # fmt: skip
    assert lines[2]["response"] is None and lines[2]["custom_id"] == "c3"
    assert "top_p=2 is out of range" in lines[2]["error"]["message"]
    assert len({line["id"] for line in lines}) == 3
