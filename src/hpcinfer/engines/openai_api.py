"""What the dispatcher keeps of the OpenAI wire format: a record's request, a stream's answer.

The format itself (bodies, SSE parsing, error texts) is `core.openai_wire`, shared with the
serving benchmark; here a Record and the job's SamplingSpec become a request, and a stream's
events become the text, finish reason and token counts of one Result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcinfer.core.openai_wire import (
    Api,
    SseParser,
    StreamError,
    choice_text,
    first_choice,
    request_body,
    usage_counts,
)
from hpcinfer.records import Record
from hpcinfer.spec import SamplingSpec


class RequestRejected(Exception):
    """The server refused this record for good (HTTP 4xx other than 408/429): an error row."""


def api_for(record: Record, choice: str) -> Api:
    """Chat for records with messages (or when asked); completions for plain prompts."""
    if record.messages is not None or choice == "chat":
        return "chat"
    return "completions"


def record_body(record: Record, api: Api, model: str, sampling: SamplingSpec) -> dict[str, Any]:
    """The JSON body of one record's streaming request (the record's own max_tokens wins)."""
    return request_body(
        api,
        model,
        max_tokens=record.max_tokens or sampling.max_tokens,
        prompt=record.prompt or "",
        messages=record.messages if api == "chat" else None,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop=list(sampling.stop) if sampling.stop else None,
        top_k=sampling.top_k,
        ignore_eos=sampling.ignore_eos,
        min_tokens=sampling.min_tokens,
        extra=record_extra(record),
    )


_PLAIN_FIELDS = (
    "temperature", "top_p", "top_k", "seed", "stop", "min_tokens",
    "presence_penalty", "frequency_penalty", "repetition_penalty",
)  # fmt: skip
_STRUCTURED = {"json_schema": "json", "regex": "regex", "choice": "choice"}


def record_extra(record: Record) -> dict[str, Any]:
    """A record's own sampling fields as vLLM's OpenAI server takes them: structured output
    as `structured_outputs`, a LoRA adapter as the model name, `chat_template`. n > 1 and
    logprobs are refused (this engine keeps one streamed text per request)."""
    fields = record.sampling
    if fields.get("n", 1) > 1 or "logprobs" in fields:
        raise RequestRejected(
            "n > 1 and logprobs are answered by the offline engine only; run this input with "
            "--engine vllm, or drop n/logprobs from the record"
        )
    extra = {name: fields[name] for name in _PLAIN_FIELDS if name in fields}
    for ours, theirs in _STRUCTURED.items():
        if ours in fields:
            extra["structured_outputs"] = {theirs: fields[ours]}
    if "lora" in fields:
        extra["model"] = fields["lora"]  # vLLM serves each --lora-modules adapter by name
    if "chat_template" in fields:
        extra["chat_template"] = fields["chat_template"]
    return extra


@dataclass
class StreamResult:
    """What one stream said, accumulated read by read."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0
    first_token: bool = False
    parser: SseParser | None = None

    def feed(self, data: bytes) -> bool:
        """Take one read of the stream; True when it carried the first token.

        Raises StreamError for anything that is not a well-formed OpenAI stream."""
        if self.parser is None:
            self.parser = SseParser()
        return self._take(self.parser.feed(data))

    def finish(self) -> None:
        """The stream ended: keep it only when it was whole ([DONE] and a finish_reason)."""
        parser = self.parser or SseParser()
        self._take(parser.finish())
        parser.check_done(self.chunks)
        if self.finish_reason is None:
            raise StreamError("stream finished without a finish_reason")

    def _take(self, events: list[dict[str, Any]]) -> bool:
        first = False
        for event in events:
            usage = usage_counts(event)
            if usage is not None:
                self.prompt_tokens, self.output_tokens = usage
            choice = first_choice(event)
            if choice is None:
                continue
            piece = choice_text(choice)
            if piece:
                first = first or not self.first_token
                self.first_token = True
                self.text += piece
                self.chunks += 1
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return first
