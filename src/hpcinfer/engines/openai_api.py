"""What the dispatcher keeps of the OpenAI wire format: a record's request, a stream's answer.

The format itself (bodies, SSE parsing, error texts) is `core.openai_wire`, shared with the
serving benchmark; here a Record and the job's SamplingSpec become a request, and a stream's
events become the texts, finish reasons, log-probabilities and token counts of one Result,
in the offline engine's row shape (`engines.record_params.fill_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpcinfer.core.openai_wire import (
    Api,
    SseParser,
    StreamError,
    choice_text,
    event_choices,
    request_body,
    token_logprobs,
    usage_counts,
)
from hpcinfer.records import Record, Result
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
        sampling=record.sampling,
    )


@dataclass
class StreamResult:
    """What one stream said, accumulated read by read: each of the request's `samples`
    choices by its index, with each token's log-probability and `top_logprobs` best
    alternatives when asked (None: not asked)."""

    samples: int = 1
    top_logprobs: int | None = None
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    logprobs: list[list[dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0
    first_token: bool = False
    parser: SseParser | None = None

    def __post_init__(self) -> None:
        self.texts = [""] * self.samples
        self.finish_reasons = [None] * self.samples
        self.logprobs = [[] for _ in range(self.samples)]

    @classmethod
    def for_record(cls, record: Record) -> StreamResult:
        return cls(record.sampling.get("n", 1), record.sampling.get("logprobs"))

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0]

    def feed(self, data: bytes) -> bool:
        """Take one read of the stream; True when it carried the first token.

        Raises StreamError for anything that is not a well-formed OpenAI stream."""
        if self.parser is None:
            self.parser = SseParser()
        return self._take(self.parser.feed(data))

    def finish(self) -> None:
        """The stream ended: keep it only when it was whole ([DONE] and a finish_reason for
        every sample)."""
        parser = self.parser or SseParser()
        self._take(parser.finish())
        parser.check_done(self.chunks)
        missing = [i for i, reason in enumerate(self.finish_reasons) if reason is None]
        if missing:
            which = "" if self.samples == 1 else f" for sample(s) {missing}"
            raise StreamError("stream finished without a finish_reason" + which)

    def fill(self, result: Result) -> None:
        """Every sample (n > 1) and the log-probabilities (when asked) into `result`, as the
        offline engine fills its rows."""
        if self.samples > 1:
            result.texts = list(self.texts)
            result.finish_reasons = list(self.finish_reasons)
        if self.top_logprobs is not None:
            result.logprobs = [list(tokens) for tokens in self.logprobs]

    def _take(self, events: list[dict[str, Any]]) -> bool:
        first = False
        for event in events:
            usage = usage_counts(event)
            if usage is not None:
                self.prompt_tokens, self.output_tokens = usage
            for choice in event_choices(event):
                index = choice.get("index", 0)
                if not 0 <= index < self.samples:
                    raise StreamError(
                        "choice index out of range",
                        f"choice index {index} in an answer of {self.samples} sample(s)",
                    )
                piece = choice_text(choice)
                if piece:
                    first = first or not self.first_token
                    self.first_token = True
                    self.texts[index] += piece
                    self.chunks += 1
                if self.top_logprobs is not None:
                    self.logprobs[index] += token_logprobs(choice, self.top_logprobs)
                if choice.get("finish_reason"):
                    self.finish_reasons[index] = str(choice["finish_reason"])
        return first
