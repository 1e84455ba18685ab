"""The OpenAI Batch output format: one line per request read from an OpenAI Batch file.

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": <completion object>},
     "error": null}

the file `vllm run-batch` and hosted batch APIs write, so tools that read their results read
hpcinfer's. The body is a `text_completion` or `chat.completion` object as the request's
`url` asked, with every sample (n) and the log-probabilities when requested. A request that
failed has `"response": null` and `"error": {"code", "message"}`.
"""

from __future__ import annotations

import hashlib
from typing import Any

BATCH_OUTPUT = "batch_output.jsonl"
"""Written beside results.jsonl, in input order, when any input is an OpenAI Batch file."""


def batch_line(row: dict[str, Any], created: int) -> dict[str, Any]:
    """The Batch output line of one results row that came from a Batch request."""
    digest = hashlib.sha256(f"{row['source']}:{row['line']}".encode()).hexdigest()[:24]
    line: dict[str, Any] = {"id": f"batch_req_{digest}", "custom_id": row["id"]}
    if row.get("status") != "ok":
        line["response"] = None
        line["error"] = {"code": "request_failed", "message": row.get("error") or ""}
        return line
    chat = row.get("batch_url") == "/v1/chat/completions"
    line["response"] = {
        "status_code": 200,
        "request_id": f"req_{digest}",
        "body": _body(row, created, digest, chat),
    }
    line["error"] = None
    return line


def _body(row: dict[str, Any], created: int, digest: str, chat: bool) -> dict[str, Any]:
    texts = row.get("texts") or [row.get("text") or ""]
    reasons = row.get("finish_reasons") or [row.get("finish_reason")]
    logprobs = row.get("logprobs")
    choices = []
    for index, text in enumerate(texts):
        tokens = logprobs[index] if logprobs and index < len(logprobs) else None
        choice: dict[str, Any] = {"index": index}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None if tokens is None else {"content": tokens}
        else:
            choice["text"] = text
            choice["logprobs"] = None if tokens is None else _completion_logprobs(tokens)
        choice["finish_reason"] = reasons[index] if index < len(reasons) else None
        choices.append(choice)
    prompt_tokens = row.get("prompt_tokens") or 0
    output_tokens = row.get("output_tokens") or 0
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{digest}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": row.get("model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        },
    }


def _completion_logprobs(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """The completions API's logprobs shape (parallel lists) from per-token entries."""
    offsets, offset = [], 0
    for token in tokens:
        offsets.append(offset)
        offset += len(token["token"])
    return {
        "tokens": [t["token"] for t in tokens],
        "token_logprobs": [t["logprob"] for t in tokens],
        "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in tokens],
        "text_offset": offsets,
    }
