"""The OpenAI-compatible wire format, once: request bodies, the SSE event stream, errors.

The dispatcher (`engines.openai_engine`) and the serving benchmark (`bench.loadgen`) both
speak it; they differ only in what they keep of a stream (the text, or when each decode step
arrived). Pure code, no I/O: every malformed, truncated or split stream a server can send is
tested without a server.

vLLM streams `data: {json}\\n\\n` per event, a usage-only event (`"choices": []`) when asked
with `stream_options.include_usage`, and `data: [DONE]` last. A read may end anywhere, mid-
line or mid-event; `SseParser` keeps the partial line for the next read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

Api = Literal["completions", "chat"]
PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
DONE = "[DONE]"
MAX_LOGPROBS = 20
"""vLLM's default `max_logprobs`: the most top alternatives a request may ask for."""
_DONE = DONE.encode()
_ERROR_CHARS = 500


class StreamError(Exception):
    """A stream (or answer) that cannot be used: malformed, truncated, an error event.

    `kind` names the failure without per-request detail (for counting), `detail` says the
    rest; `str()` is the detail."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail or kind
        super().__init__(self.detail)


def truncated(chunks: int) -> StreamError:
    """A stream without [DONE] was cut (server died, proxy timeout): never keep half an answer."""
    return StreamError(
        "stream ended before [DONE] (truncated)",
        f"stream ended before [DONE] after {chunks} token chunk(s) (truncated)",
    )


# ------------------------------------------------------------------------------ requests


def request_body(
    api: Api,
    model: str,
    *,
    max_tokens: int,
    prompt: str | list[int] | None = None,
    messages: list[dict[str, Any]] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    top_k: int | None = None,
    ignore_eos: bool = False,
    min_tokens: int | None = None,
    extra: dict[str, Any] | None = None,
    sampling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one streaming request that reports usage at its end.

    Completions take `prompt` (text or token ids); chat takes `messages`, or a text `prompt`
    as one user message. Fields left at None/False/0 are not sent, so a server that knows
    only the OpenAI API accepts the requests that do not use vLLM's extensions (top_k,
    ignore_eos, min_tokens). `extra` fields are sent as given and override the rest; a
    record's own sampling fields (`sampling`, `Record.sampling`) override those.
    Raises ValueError for a request the chosen API cannot carry."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if top_p is not None:
        body["top_p"] = top_p
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if api == "chat":
        if messages is not None:
            body["messages"] = messages
        elif isinstance(prompt, str):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            raise ValueError(
                "a prompt of token ids cannot go to the chat API; use the completions API "
                "for random token prompts"
            )
    else:
        if prompt is None:
            raise ValueError("chat messages need the chat API (api='chat'), not completions")
        body["prompt"] = prompt
    if seed is not None:
        body["seed"] = seed
    if stop:
        body["stop"] = list(stop)
    if top_k is not None and top_k > 0:
        body["top_k"] = top_k
    if ignore_eos:
        body["ignore_eos"] = True
    if min_tokens:
        body["min_tokens"] = min_tokens
    if extra:
        body.update(extra)
    if sampling:
        body.update(sampling_fields(sampling, api))
    return body


_PLAIN_FIELDS = (
    "temperature", "top_p", "top_k", "seed", "stop", "min_tokens", "n",
    "presence_penalty", "frequency_penalty", "repetition_penalty",
)  # fmt: skip
_STRUCTURED = {"json_schema": "json", "regex": "regex", "choice": "choice"}


def sampling_fields(fields: Mapping[str, Any], api: Api) -> dict[str, Any]:
    """A record's own sampling fields (checked by `inputs.sampling`) as vLLM's OpenAI server
    takes them: structured output as `structured_outputs`, log-probabilities as the API
    asks for them, a LoRA adapter as the model name, `chat_template`."""
    extra = {name: fields[name] for name in _PLAIN_FIELDS if name in fields}
    if "logprobs" in fields:
        extra.update(request_logprobs(api, fields["logprobs"], MAX_LOGPROBS))
    for ours, theirs in _STRUCTURED.items():
        if ours in fields:
            extra["structured_outputs"] = {theirs: fields[ours]}
    if "lora" in fields:
        extra["model"] = fields["lora"]  # vLLM serves each --lora-modules adapter by name
    if "chat_template" in fields:
        extra["chat_template"] = fields["chat_template"]
    return extra


# ------------------------------------------------------------------------------ streams


class SseParser:
    """Incremental parser of an OpenAI SSE stream: bytes in, JSON events out.

    `feed(data)` returns the events whose line ended in `data` (a partial line waits for the
    next read); at the end, `finish()` takes a last line without its newline and
    `check_done()` says whether the stream was cut before [DONE]. Blank lines and `:`
    comments (keep-alives) are skipped; an error event, a line that is not `data:`,
    malformed JSON or data after [DONE] raise StreamError."""

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buffer + data if self._buffer else data
        events: list[dict[str, Any]] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            event = self._line(buf[start:end])
            if event is not None:
                events.append(event)
            start = end + 1
        self._buffer = buf[start:]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events of a last line without its newline (the stream has ended)."""
        rest, self._buffer = self._buffer, b""
        event = self._line(rest) if rest.strip() else None
        return [] if event is None else [event]

    def check_done(self, chunks: int) -> None:
        """StreamError unless [DONE] came; `chunks`, the token chunks seen, is in the message."""
        if not self.done:
            raise truncated(chunks)

    def _line(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line or line.startswith(b":"):
            return None  # event separator or SSE comment (keep-alive)
        if not line.startswith(b"data:"):
            raise StreamError("not an SSE data line", f"not an SSE data line: {_snippet(line)}")
        payload = line[5:].strip()
        if payload == _DONE:
            self.done = True
            return None
        if self.done:
            raise StreamError("data after [DONE]", f"data after [DONE]: {_snippet(payload)}")
        try:
            event = json.loads(payload)
        except ValueError:
            raise StreamError(
                "malformed JSON in the stream", f"malformed JSON in the stream: {_snippet(payload)}"
            ) from None
        if not isinstance(event, dict):
            raise StreamError(
                "stream event is not an object",
                f"stream event is not an object: {_snippet(payload)}",
            )
        if "error" in event:
            raise StreamError("error event in the stream", f"error event: {error_message(event)}")
        return event


def first_choice(event: dict[str, Any]) -> dict[str, Any] | None:
    """The event's first choice; None for a usage-only event. StreamError when malformed."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise StreamError("malformed choice", f"malformed choice: {_snippet(repr(event))}")
    return choice


def event_choices(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every choice of an event (vLLM sends one per event, each with its `index` among the
    request's n samples); [] for a usage-only event. StreamError when malformed."""
    choices = event.get("choices")
    if not isinstance(choices, list):
        return []
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
            raise StreamError("malformed choice", f"malformed choice: {_snippet(repr(event))}")
    return choices


def request_logprobs(api: Api, top: int, most: int) -> dict[str, Any]:
    """The request fields asking for each token's log-probability and its `top` best
    alternatives (at most `most`, the server's `max_logprobs`).

    vLLM lists the sampled token first and then the best alternatives, cutting that list at
    `logprobs + 1` entries (completions) or at `top_logprobs` (chat): a sampled token outside
    the best `top` would push the last one out of a chat answer, so chat asks for one more;
    `token_logprobs` keeps the best `top` of either."""
    if api == "completions":
        return {"logprobs": top}
    return {"logprobs": True, "top_logprobs": min(top + 1, most) if top else 0}


def token_logprobs(choice: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """The tokens of one stream choice as {token, logprob, top_logprobs: [{token, logprob}]},
    the best `top` alternatives first, from a completion's parallel lists or a chat delta's
    `content`; positions without a log-probability are left out. StreamError when malformed."""
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return []
    try:
        if "content" in logprobs:  # chat
            return [
                _token(item["token"], item["logprob"], [
                    (alt["token"], alt["logprob"]) for alt in item.get("top_logprobs") or []
                ], top)
                for item in logprobs["content"] or []
                if item.get("logprob") is not None
            ]  # fmt: skip
        tokens, chosen = logprobs["tokens"], logprobs["token_logprobs"]
        alternatives = logprobs.get("top_logprobs") or [None] * len(tokens)
        return [
            _token(token, logprob, list((alts or {}).items()), top)
            for token, logprob, alts in zip(tokens, chosen, alternatives, strict=True)
            if logprob is not None
        ]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise StreamError(
            "malformed logprobs", f"malformed logprobs: {_snippet(repr(logprobs))}"
        ) from None


def _token(
    token: Any, logprob: Any, alternatives: list[tuple[Any, Any]], top: int
) -> dict[str, Any]:
    best = sorted(alternatives, key=lambda alt: -float(alt[1]))[:top]
    return {
        "token": str(token),
        "logprob": float(logprob),
        "top_logprobs": [{"token": str(t), "logprob": float(lp)} for t, lp in best],
    }


def choice_text(choice: dict[str, Any]) -> str:
    """The text a choice carries: a completion's `text` or a chat delta's `content`."""
    piece = choice.get("text")
    if piece is None:
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else None
    if piece is None:
        return ""
    if not isinstance(piece, str):
        raise StreamError(
            "token text is not a string", f"token text is not a string: {_snippet(repr(choice))}"
        )
    return piece


def is_decode_step(choice: dict[str, Any]) -> bool:
    """Whether a choice is one decode step, as `vllm bench serve` counts them (its text may be
    empty: a token that decodes to nothing yet), except a chat role announcement with no
    content (`{"role": "assistant", "content": ""}`), which is not a token."""
    delta = choice.get("delta")
    if isinstance(delta, dict) and "role" in delta:
        return any(value for key, value in delta.items() if key != "role")
    return True


def usage_counts(event: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """(prompt_tokens, completion_tokens) of an event that reports usage, else None."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    return _int_or_none(usage.get("prompt_tokens")), _int_or_none(usage.get("completion_tokens"))


# ------------------------------------------------------------------------------ errors


def error_text(status: int, body: bytes) -> str:
    """`HTTP 400: <the server's message>` from an error response."""
    try:
        payload = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {_snippet(body)}"
    message = error_message(payload) if isinstance(payload, dict) else _snippet(body)
    return f"HTTP {status}: {message}"


def retryable_status(status: int) -> bool:
    """5xx, 408 (timeout) and 429 (overloaded) may succeed elsewhere or later."""
    return status >= 500 or status in (408, 429)


def error_message(payload: dict[str, Any]) -> str:
    """The message of an OpenAI error object (`{"error": {"message": ...}}` and variants)."""
    error = payload.get("error", payload)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:_ERROR_CHARS]
    message = payload.get("message") or payload.get("detail") or error
    return str(message)[:_ERROR_CHARS]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _snippet(data: bytes | str) -> str:
    if isinstance(data, str):
        return data[:120]
    return data[:120].decode("utf-8", errors="replace")
