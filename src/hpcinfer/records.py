"""The unit of data: one prompt (a Record) and what came of it (a Result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """One prompt read from an input file.

    Exactly one of `prompt` / `messages` is set for a good record. A record that could not be
    read carries `error` instead, so it flows through the job as an error row and nothing is
    lost or silently dropped.
    """

    id: str
    source: str
    line: int
    prompt: str | None = None
    messages: list[Message] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    max_tokens: int | None = None
    """Per-record output budget (from `inputs.max_tokens_field`); None: the job's."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Per-record sampling fields, validated (`inputs.sampling.SAMPLING_FIELDS`), over the
    job's `sampling` section: temperature, n, logprobs, json_schema, lora, ..."""
    batch_url: str | None = None
    """Set for a request read from an OpenAI Batch file (its `url`), so the Batch output
    file can answer it in kind; `id` is then its `custom_id`."""

    @property
    def where(self) -> str:
        """`file:line`, the place a user opens to fix this record."""
        return f"{self.source}:{self.line}"


@dataclass(slots=True)
class Result:
    """What the engine made of one record; becomes one output row."""

    id: str
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    endpoint: str | None = None
    """The server that answered (dispatcher engines only)."""
    texts: list[str] | None = None
    """Every sample when a record asked for n > 1 (`text` is the first)."""
    finish_reasons: list[str | None] | None = None
    """The finish reason of each sample when n > 1."""
    logprobs: list[list[dict[str, Any]]] | None = None
    """When asked: per sample, per generated token {token, logprob, top_logprobs}."""
    status: str = "ok"
    error: str | None = None

    @classmethod
    def failed(cls, record_id: str, error: str) -> Result:
        return cls(id=record_id, status="error", error=error)
