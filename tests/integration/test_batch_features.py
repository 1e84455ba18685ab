"""An OpenAI Batch file with per-record sampling through the real CPU vLLM (tiny model):
n=2, logprobs, a JSON schema and a choice list, answered in the Batch output format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import read_rows, run_cli

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def request(custom_id: str, url: str, **body: Any) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "x", **body}}
    return json.dumps(line) + "\n"


def valid(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 8
        and isinstance(value["age"], int)
    )


def test_batch_file_with_per_record_sampling(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "requests.jsonl").write_text(
        request("two", "/v1/completions", prompt="Once upon", max_tokens=6, n=2, logprobs=2,
                temperature=1.0, seed=11)
        # the tiny model is random: guided decoding alone makes the JSON valid; 200 tokens
        # leave room for the closing brace under the schema's short name
        + request("json", "/v1/chat/completions",
                  messages=[{"role": "user", "content": "A person as JSON"}], max_tokens=200,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "person", "schema": SCHEMA}})
        + request("pick", "/v1/completions", prompt="Yes or no?", max_tokens=4,
                  structured_outputs={"choice": ["yes", "no"]}, logprobs=True)
        + request("bad", "/v1/completions", prompt="x", top_p=3),
        encoding="utf-8",
    )  # fmt: skip
    proc = run_cli(["run", "requests.jsonl", "-o", "out", "--workers", "1"], tmp_path, cli_env)
    assert proc.returncode == 3, proc.stderr[-3000:]  # one request is an error row
    rows = {row["id"]: row for row in read_rows(tmp_path / "out" / "results.jsonl")}
    assert len(rows["two"]["texts"]) == 2 and rows["two"]["text"] == rows["two"]["texts"][0]
    counts = [len(sample) for sample in rows["two"]["logprobs"]]  # one entry per token
    assert len(counts) == 2 and all(1 <= count <= 6 for count in counts)
    assert rows["two"]["output_tokens"] == sum(counts)
    assert (
        rows["bad"]["status"] == "error" and "body.top_p=3 is out of range" in rows["bad"]["error"]
    )

    lines = read_rows(tmp_path / "out" / "batch_output.jsonl")
    assert [line["custom_id"] for line in lines] == ["two", "json", "pick", "bad"]
    two, person, pick, bad = lines
    body = two["response"]["body"]
    assert two["response"]["status_code"] == 200 and two["error"] is None
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        assert 1 <= len(logprobs["tokens"]) <= 6
        assert all(lp <= 0 for lp in logprobs["token_logprobs"])
        assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert body["usage"]["completion_tokens"] == sum(counts)
    chat = person["response"]["body"]
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["finish_reason"] == "stop"  # the JSON closed before the budget
    assert valid(json.loads(chat["choices"][0]["message"]["content"]))
    picked = pick["response"]["body"]["choices"][0]
    assert picked["text"] in ("yes", "no") and picked["logprobs"]["tokens"]
    assert bad["response"] is None and "top_p" in bad["error"]["message"]
