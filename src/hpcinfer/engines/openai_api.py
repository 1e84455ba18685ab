"""The OpenAI-compatible wire format: request bodies from records, results from SSE streams.

Pure functions and one small parser, no I/O, so every malformed or truncated stream a server
can send is tested without a server. Sampling fields that only vLLM understands (top_k,
ignore_eos, min_tokens) are sent only when set, so any OpenAI-compatible server accepts the
requests of a job that does not use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from hpcinfer.records import Record
from hpcinfer.spec import SamplingSpec

Api = Literal["completions", "chat"]
PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
DONE = "[DONE]"


class StreamError(Exception):
    """The server's answer cannot be used (malformed, truncated, an error event): retry it."""


class RequestRejected(Exception):
    """The server refused this record for good (HTTP 4xx other than 408/429): an error row."""


def api_for(record: Record, choice: str) -> Api:
    """Chat for records with messages (or when asked); completions for plain prompts."""
    if record.messages is not None or choice == "chat":
        return "chat"
    return "completions"


def request_body(record: Record, api: Api, model: str, sampling: SamplingSpec) -> dict[str, Any]:
    """The JSON body of one streaming request."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": record.max_tokens or sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        body["messages"] = (
            record.messages
            if record.messages is not None
            else [{"role": "user", "content": record.prompt or ""}]
        )
    else:
        body["prompt"] = record.prompt or ""
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.top_k is not None and sampling.top_k > 0:
        body["top_k"] = sampling.top_k
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if sampling.min_tokens:
        body["min_tokens"] = sampling.min_tokens
    return body


@dataclass
class StreamResult:
    """What one stream said, accumulated chunk by chunk."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0
    done: bool = False
    first_token: bool = False


def feed_line(state: StreamResult, line: bytes) -> bool:
    """Take one line of an SSE stream; True when this line carried the first token.

    Raises StreamError for anything that is not a well-formed OpenAI stream event."""
    text = line.strip()
    if not text or text.startswith(b":"):
        return False  # blank separator or SSE comment (keep-alive)
    if not text.startswith(b"data:"):
        raise StreamError(f"not an SSE data line: {_snippet(text)}")
    data = text[5:].strip()
    if data == DONE.encode():
        state.done = True
        return False
    if state.done:
        raise StreamError("data after [DONE]")
    try:
        event = json.loads(data)
    except ValueError:
        raise StreamError(f"malformed JSON in the stream: {_snippet(data)}") from None
    if not isinstance(event, dict):
        raise StreamError(f"stream event is not an object: {_snippet(data)}")
    if "error" in event:
        raise StreamError(f"error event: {_error_message(event)}")
    usage = event.get("usage")
    if isinstance(usage, dict):
        state.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        state.output_tokens = _int_or_none(usage.get("completion_tokens"))
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    choice = choices[0]
    if not isinstance(choice, dict):
        raise StreamError(f"malformed choice: {_snippet(data)}")
    piece = choice.get("text")
    if piece is None:
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else None
    first = False
    if piece:
        if not isinstance(piece, str):
            raise StreamError(f"token text is not a string: {_snippet(data)}")
        first = not state.first_token
        state.first_token = True
        state.text += piece
        state.chunks += 1
    if choice.get("finish_reason"):
        state.finish_reason = str(choice["finish_reason"])
    return first


def check_complete(state: StreamResult) -> None:
    """A stream without [DONE] was cut (server died, proxy timeout): never keep half an answer."""
    if not state.done:
        raise StreamError(
            f"stream ended before [DONE] after {state.chunks} token chunk(s) (truncated)"
        )
    if state.finish_reason is None:
        raise StreamError("stream finished without a finish_reason")


def error_text(status: int, body: bytes) -> str:
    """`HTTP 400: <the server's message>` from an error response."""
    try:
        payload = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {_snippet(body)}"
    message = _error_message(payload) if isinstance(payload, dict) else _snippet(body)
    return f"HTTP {status}: {message}"


def retryable_status(status: int) -> bool:
    """5xx, 408 (timeout) and 429 (overloaded) may succeed elsewhere or later."""
    return status >= 500 or status in (408, 429)


def _error_message(payload: dict[str, Any]) -> str:
    error = payload.get("error", payload)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    message = payload.get("message") or payload.get("detail") or error
    return str(message)[:500]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _snippet(data: bytes) -> str:
    return data[:120].decode("utf-8", errors="replace")
