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
    status: str = "ok"
    error: str | None = None

    @classmethod
    def failed(cls, record_id: str, error: str) -> Result:
        return cls(id=record_id, status="error", error=error)
