"""The output row: one per record, the same shape for every engine."""

from __future__ import annotations

from typing import Any

from hpcinfer.records import Record, Result

ROW_FIELDS = (
    "id",
    "source",
    "line",
    "status",
    "error",
    "text",
    "finish_reason",
    "prompt_tokens",
    "output_tokens",
    "latency_s",
    "ttft_s",
    "endpoint",
    "worker",
    "model",
)
"""Columns of results.jsonl; `prompt`/`messages` (on request) and `fields` (when the input
had extra fields) follow them, then, when a record asked for them, `texts` and
`finish_reasons` (every sample of n > 1; `text` is the first), `logprobs` (per sample, per
token) and `batch_url` (the record came from an OpenAI Batch file)."""


def make_row(record: Record, result: Result, *, worker: int, model: str) -> dict[str, Any]:
    """Join a record with its result. The prompt is always stored in the unit file (the text
    export needs it) and dropped from results.jsonl unless asked for."""
    row: dict[str, Any] = {
        "id": record.id,
        "source": record.source,
        "line": record.line,
        "status": result.status,
        "error": result.error,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "latency_s": result.latency_s,
        "ttft_s": result.ttft_s,
        "endpoint": result.endpoint,
        "worker": worker,
        "model": model,
    }
    if record.messages is not None:
        row["messages"] = record.messages
    else:
        row["prompt"] = record.prompt
    if record.fields:
        row["fields"] = record.fields
    if result.texts is not None:
        row["texts"] = result.texts
        row["finish_reasons"] = result.finish_reasons
    if result.logprobs is not None:
        row["logprobs"] = result.logprobs
    if record.batch_url is not None:
        row["batch_url"] = record.batch_url
    return row
