"""An OpenAI Batch file with per-record sampling through the real CPU vLLM (tiny model):
n=2, logprobs, a JSON schema and a choice list, answered in the Batch output format, by the
offline engine and by a vLLM server (`--engine vllm-server`) with rows of the same shape."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_rows, run_cli
from tests.processes import assert_no_orphans

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


def write_requests(path: Path) -> None:
    path.write_text(
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
        + request("chat2", "/v1/chat/completions",
                  messages=[{"role": "user", "content": "Say hi"}], max_tokens=5, n=2,
                  logprobs=True, top_logprobs=3, temperature=1.0, seed=5)
        + request("bad", "/v1/completions", prompt="x", top_p=3),
        encoding="utf-8",
    )  # fmt: skip


def check_outputs(out: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The Batch features' promises, whichever engine answered; (rows by id, Batch lines)."""
    rows = {row["id"]: row for row in read_rows(out / "results.jsonl")}
    for name, top in (("two", 2), ("chat2", 3)):
        row = rows[name]
        assert len(row["texts"]) == 2 and row["text"] == row["texts"][0], row
        assert len(row["finish_reasons"]) == 2
        counts = [len(sample) for sample in row["logprobs"]]  # one entry per token
        assert len(counts) == 2 and all(1 <= count <= 6 for count in counts), row
        assert row["output_tokens"] == sum(counts)
        for token in (token for sample in row["logprobs"] for token in sample):
            assert token["logprob"] <= 0 and 1 <= len(token["top_logprobs"]) <= top
            best = [alt["logprob"] for alt in token["top_logprobs"]]
            assert best == sorted(best, reverse=True)  # the best alternatives, best first
    assert rows["pick"]["logprobs"] and all(
        t["top_logprobs"] == [] for t in rows["pick"]["logprobs"][0]
    )  # logprobs=true: the sampled token's own, no alternatives
    assert (
        rows["bad"]["status"] == "error" and "body.top_p=3 is out of range" in rows["bad"]["error"]
    )

    lines = read_rows(out / "batch_output.jsonl")
    assert [line["custom_id"] for line in lines] == ["two", "json", "pick", "chat2", "bad"]
    two, person, pick, chat2, bad = lines
    body = two["response"]["body"]
    assert two["response"]["status_code"] == 200 and two["error"] is None
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        assert 1 <= len(logprobs["tokens"]) <= 6
        assert all(lp <= 0 for lp in logprobs["token_logprobs"])
        assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert body["usage"]["completion_tokens"] == rows["two"]["output_tokens"]
    chat = person["response"]["body"]
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["finish_reason"] == "stop"  # the JSON closed before the budget
    # vLLM's JSON grammar (xgrammar) lets raw control characters into strings: strict=False
    assert valid(json.loads(chat["choices"][0]["message"]["content"], strict=False))
    picked = pick["response"]["body"]["choices"][0]
    assert picked["text"] in ("yes", "no") and picked["logprobs"]["tokens"]
    both = chat2["response"]["body"]["choices"]
    assert [c["index"] for c in both] == [0, 1] and all(c["logprobs"]["content"] for c in both)
    assert bad["response"] is None and "top_p" in bad["error"]["message"]
    return rows, lines


def shape(value: Any) -> Any:
    """A row or Batch line with every value replaced by its type (lists by the shape of their
    items), leaving out what differs between runs (timings, the answering server)."""
    if isinstance(value, dict):
        varying = {"latency_s", "ttft_s", "endpoint", "created", "id", "request_id"}
        return {k: shape(v) for k, v in sorted(value.items()) if k not in varying}
    if isinstance(value, list):
        return sorted({json.dumps(shape(item), sort_keys=True) for item in value})
    return type(value).__name__


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("offline")
    write_requests(root / "requests.jsonl")
    proc = run_cli(["run", "requests.jsonl", "-o", "out", "--workers", "1"], root, cli_env)
    assert proc.returncode == 3, proc.stderr[-3000:]  # one request is an error row
    return root / "out"


def test_batch_file_with_per_record_sampling(offline: Path) -> None:
    check_outputs(offline)


def test_the_same_batch_file_through_a_vllm_server(
    offline: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """One real CPU vLLM server (the one-shot fleet; requests go through the dispatcher):
    the same promises, and rows and Batch lines of the offline engine's shape."""
    mark = uuid.uuid4().hex
    env = dict(cli_env, HPCINFER_TEST_MARK=mark)
    write_requests(tmp_path / "requests.jsonl")
    args = ["run", "requests.jsonl", "--engine", "vllm-server", "--servers", "1", "-o", "out",
            "--set", "serve.port=8630"]  # fmt: skip
    proc = run_cli(args, tmp_path, env, 600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    rows, lines = check_outputs(tmp_path / "out")
    assert all(row["endpoint"] for row in rows.values() if row["status"] == "ok")
    offline_rows, offline_lines = check_outputs(offline)
    for name, row in rows.items():
        assert shape(row) == shape(offline_rows[name]), name
    assert [shape(line) for line in lines] == [shape(line) for line in offline_lines]
    assert_no_orphans(mark, "--port 8630")
