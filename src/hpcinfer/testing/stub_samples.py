"""The stub server's answers to `n > 1` and log-probabilities, in vLLM 0.32's wire format.

Why a module of its own: a client must be tested on exactly what vLLM's OpenAI server sends
for several samples per prompt and for log-probabilities (one choice per event, tagged with
its `index`; the completions API's parallel lists against the chat API's `content` list;
vLLM's order of the alternatives), and the stub's plain one-sample path stays the fast one.

Sample j of a request generates " tok{i}" (j = 0, as with n = 1) or " s{j}tok{i}". The
log-probabilities are made up but follow vLLM's rules, so a client's reading of them is
checked exactly: rank r has log-probability -0.5 * r; the sampled token is rank 1 at even
positions and just outside the ranks asked for at odd ones; the other ranks are " alt{r}".
vLLM lists the sampled token first, then ranks 1..N (N = the completions API's `logprobs`,
the chat API's `top_logprobs`; a sampled token among them is not repeated), and sends the
first N + 1 of them (completions) or the first N (chat).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_LOGPROBS = 20
"""vLLM's default `--max-logprobs`: a request asking for more is refused (400)."""
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
STRUCTURED_OPTIONS = ("disable_any_whitespace", "disable_additional_properties",
                      "whitespace_pattern")  # fmt: skip


@dataclass(frozen=True)
class Sampling:
    """What a request asked of its answer beyond the token count."""

    n: int = 1
    ranks: int | None = None
    """N above: the ranked alternatives computed per token; None: no log-probabilities."""
    chat: bool = False

    @property
    def plain(self) -> bool:
        return self.n == 1 and self.ranks is None


def parse_sampling(chat: bool, body: dict[str, Any]) -> Sampling:
    """n, logprobs and structured_outputs of a request body, checked as vLLM checks them;
    ValueError with vLLM's kind of message (the stub answers 400)."""
    n = body.get("n")
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"'n' must be an integer >= 1, got {n!r}")
    if chat:
        wanted, top = body.get("logprobs"), body.get("top_logprobs")
        if wanted not in (None, True, False):
            raise ValueError(f"'logprobs' must be true or false in chat, got {wanted!r}")
        top = 0 if top is None else top
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise ValueError(f"'top_logprobs' must be an integer >= 0, got {top!r}")
        if top and not wanted:
            raise ValueError("when using `top_logprobs`, `logprobs` must be set to true.")
        ranks = top if wanted else None
    else:
        ranks = body.get("logprobs")
        if ranks is not None and (not isinstance(ranks, int) or isinstance(ranks, bool)
                                  or ranks < 0):  # fmt: skip
            raise ValueError(f"'logprobs' must be an integer >= 0, got {ranks!r}")
    if ranks is not None and ranks > MAX_LOGPROBS:
        raise ValueError(
            f"Requested sample logprobs of {ranks}, which is greater than max allowed: "
            f"{MAX_LOGPROBS}"
        )
    _check_structured(body.get("structured_outputs"))
    return Sampling(n, ranks, chat)


def _check_structured(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError("'structured_outputs' must be an object")
    unknown = sorted(set(value) - set(STRUCTURED_KINDS) - set(STRUCTURED_OPTIONS))
    if unknown:
        raise ValueError(f"'structured_outputs' has unknown field(s) {unknown}")
    kinds = [kind for kind in STRUCTURED_KINDS if value.get(kind) is not None]
    if len(kinds) != 1:
        raise ValueError(
            "You can only use one kind of constraints for structured outputs "
            f"({', '.join(STRUCTURED_KINDS)}); got {kinds or 'none'}"
        )


def token(i: int, j: int) -> str:
    """Token i of sample j."""
    return f" tok{i}" if j == 0 else f" s{j}tok{i}"


def logprob(rank: int) -> float:
    return -0.5 * rank


def sampled_rank(i: int, ranks: int) -> int:
    return 1 if i % 2 == 0 else ranks + 1


def listed(i: int, j: int, sampling: Sampling) -> list[tuple[str, float]]:
    """The (token, logprob) pairs vLLM sends for token i of sample j, in its order."""
    ranks = sampling.ranks or 0
    mine = sampled_rank(i, ranks)
    pairs = [(token(i, j), logprob(mine))]
    pairs += [(f" alt{r}", logprob(r)) for r in range(1, ranks + 1) if r != mine]
    return pairs[:ranks] if sampling.chat else pairs[: ranks + 1]


def chat_entry(i: int, j: int, sampling: Sampling) -> dict[str, Any]:
    """One token of a chat answer's `logprobs.content`."""
    text = token(i, j)
    return {
        "token": text,
        "logprob": logprob(sampled_rank(i, sampling.ranks or 0)),
        "bytes": list(text.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": lp, "bytes": list(alt.encode())}
            for alt, lp in listed(i, j, sampling)
        ],
    }


def completion_logprobs(tokens: range, j: int, sampling: Sampling) -> dict[str, Any]:
    """The completions API's parallel lists for `tokens` of sample j."""
    offset = sum(len(token(i, j)) for i in range(tokens.start))
    offsets = []
    for i in tokens:
        offsets.append(offset)
        offset += len(token(i, j))
    return {
        "text_offset": offsets,
        "token_logprobs": [logprob(sampled_rank(i, sampling.ranks or 0)) for i in tokens],
        "tokens": [token(i, j) for i in tokens],
        "top_logprobs": [dict(listed(i, j, sampling)) for i in tokens],
    }


def _logprobs(tokens: range, j: int, sampling: Sampling) -> dict[str, Any] | None:
    if sampling.ranks is None:
        return None
    if sampling.chat:
        return {"content": [chat_entry(i, j, sampling) for i in tokens]}
    return completion_logprobs(tokens, j, sampling)


def token_event(head: str, i: int, j: int, last: bool, sampling: Sampling) -> bytes:
    """The stream event carrying token i of sample j (its own choice, as vLLM sends)."""
    finish = "length" if last else None
    choice: dict[str, Any] = {"index": j}
    if sampling.chat:
        choice["delta"] = {"content": token(i, j)}
    else:
        choice["text"] = token(i, j)
    choice["logprobs"] = _logprobs(range(i, i + 1), j, sampling)
    choice["finish_reason"] = finish
    choice["stop_reason"] = None
    return f"data: {head}[{json.dumps(choice, separators=(',', ':'))}]}}\n\n".encode()


def role_event(head: str, j: int) -> bytes:
    """The chat stream's first event of sample j."""
    choice = {"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
              "finish_reason": None}  # fmt: skip
    return f"data: {head}[{json.dumps(choice, separators=(',', ':'))}]}}\n\n".encode()


def whole_choices(max_tokens: int, sampling: Sampling) -> list[dict[str, Any]]:
    """The `choices` of a non-streaming answer."""
    choices = []
    tokens = range(max_tokens)
    for j in range(sampling.n):
        text = "".join(token(i, j) for i in tokens)
        choice: dict[str, Any] = {"index": j}
        if sampling.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = _logprobs(tokens, j, sampling)
        choice |= {"finish_reason": "length", "stop_reason": None}
        choices.append(choice)
    return choices
