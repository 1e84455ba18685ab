"""The OpenAI Batch file format, read side: one request per JSONL line.

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [...], "temperature": 0.2, "n": 2, ...}}

The format `vllm run-batch` and hosted batch APIs take, so a file prepared for them runs
unchanged: the record's id is its `custom_id`, the body's sampling fields become its own
sampling fields, and `Record.batch_url` remembers the endpoint so the output side writes
the Batch output format (`outputs.batch_output`). `body.model` is not used: the job's model
answers (choose a LoRA adapter per request with `lora`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcinfer.inputs.sampling import SamplingFieldError, apply_sampling
from hpcinfer.records import Message, Record

BATCH_URLS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
_UNSUPPORTED = (
    "tools", "tool_choice", "functions", "function_call", "logit_bias", "echo", "suffix",
    "best_of", "audio", "modalities", "prediction",
)  # fmt: skip
"""Body fields that would change the answer and that hpcinfer does not carry out."""


def is_batch_line(obj: Mapping[str, Any]) -> bool:
    """A JSONL object shaped as a Batch request (how `.jsonl` Batch files are detected)."""
    return "custom_id" in obj and "body" in obj and "url" in obj


def batch_record(
    obj: Mapping[str, Any], source: str, line_no: int, messages: Any
) -> tuple[Record, str | None]:
    """(record, problem): a record of this Batch request, or the reason it cannot be run.

    `messages` checks chat messages (the reader's own check, shared with plain JSONL)."""
    custom_id = obj.get("custom_id")
    record_id = str(custom_id) if custom_id not in (None, "") else f"{source}:{line_no}"
    base = Record(record_id, source, line_no)
    if not isinstance(custom_id, str) or not custom_id.strip():
        return base, "custom_id must be a non-empty string (it names the request in the output)"
    url = obj.get("url")
    if url not in BATCH_URLS:
        return base, (f"url {url!r} is not supported; use /v1/completions or /v1/chat/completions")
    method = obj.get("method", "POST")
    if str(method).upper() != "POST":
        return base, f"method {method!r} is not supported; Batch requests are POST"
    body = obj.get("body")
    if not isinstance(body, dict):
        return base, "body must be a JSON object holding the request"
    base = Record(record_id, source, line_no, batch_url=url)
    unsupported = [key for key in _UNSUPPORTED if key in body]
    if unsupported:
        return base, (
            f"body.{unsupported[0]} is not supported by hpcinfer; remove it from the request"
        )
    try:
        values = _body_sampling(body, BATCH_URLS[url])
    except SamplingFieldError as exc:
        return base, str(exc)
    if BATCH_URLS[url] == "chat":
        if "messages" not in body:
            return base, "a /v1/chat/completions body needs 'messages'"
        try:
            chat: list[Message] = messages(body["messages"])
        except ValueError as exc:
            return base, str(exc)
        record = Record(record_id, source, line_no, messages=chat, batch_url=url)
        values["messages"] = chat
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return base, (
                "body.prompt must be one string (lists of prompts and token ids are not "
                "supported; write one request per prompt)"
            )
        if not prompt.strip():
            return base, "empty prompt; give this request some text or remove it"
        record = Record(record_id, source, line_no, prompt=prompt, batch_url=url)
    record = apply_sampling(record, values, prefix="body.")
    return record, None


def _body_sampling(body: Mapping[str, Any], api: str) -> dict[str, Any]:
    """The body's fields under hpcinfer's per-record names (OpenAI and vLLM spellings)."""
    values = {k: v for k, v in body.items() if k not in ("messages", "prompt", "model")}
    if "max_completion_tokens" in values:
        values.setdefault("max_tokens", values.pop("max_completion_tokens"))
    if api == "chat" and "logprobs" in values:
        wanted = values.pop("logprobs")
        if wanted not in (True, False, None):
            raise SamplingFieldError(f"body.logprobs={wanted!r} must be true or false in chat")
        if wanted:
            values["logprobs"] = values.get("top_logprobs") or 0
    values.pop("top_logprobs", None)
    structured = values.pop("structured_outputs", None)
    if isinstance(structured, dict):
        for theirs, ours in (("json", "json_schema"), ("regex", "regex"), ("choice", "choice")):
            if theirs in structured:
                values.setdefault(ours, structured[theirs])
    for theirs, ours in (("guided_json", "json_schema"), ("guided_regex", "regex"),
                         ("guided_choice", "choice")):  # fmt: skip
        if theirs in values:
            values.setdefault(ours, values.pop(theirs))
    response_format = values.pop("response_format", None)
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        wrapper = response_format.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
        if not isinstance(schema, dict):
            raise SamplingFieldError(
                "body.response_format.json_schema.schema must be a JSON schema object"
            )
        values.setdefault("json_schema", schema)
    elif isinstance(response_format, dict) and response_format.get("type") == "json_object":
        values.setdefault("json_schema", {"type": "object"})
    return values
