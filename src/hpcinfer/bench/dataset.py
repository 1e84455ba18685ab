"""What a serving benchmark sends: random token-id prompts of exact lengths, or input files.

Input files are read as `hpcinfer run` reads them (`inputs.readers`: text, JSONL prompts or
chat messages, CSV/TSV/Parquet with a prompt column or a template); a chat record goes to
/v1/chat/completions, a prompt to the API chosen for the run, each with the record's own
sampling fields (temperature, seed, ...), sent over the run's as `run` sends them.

Random prompts are lists of token ids sent as such on `/v1/completions` (vLLM accepts a
prompt of token ids), so the server sees exactly `input_len` tokens: text prompts change
length when a tokenizer re-reads them, which is why `vllm bench serve` decodes, re-encodes and
warns about mismatches. The ids are drawn from the tokenizer's vocabulary minus its special
ids, as vLLM's random dataset draws them (a BOS or EOS in the middle of a prompt is not what a
user sends). `ignore_eos` with `max_tokens = output_len` then fixes the output length too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hpcinfer.inputs.template import PromptTemplate

from hpcinfer.errors import InputError


@dataclass(frozen=True)
class BenchRequest:
    """One request of a benchmark; `source` says where it came from, for error messages."""

    source: str
    output_len: int
    """max_tokens (sent with ignore_eos for exact lengths)."""
    prompt: str | list[int] | None = None
    """completions: text or token ids."""
    messages: list[dict[str, Any]] | None = None
    """chat."""
    prompt_len: int | None = None
    """Exact input tokens when known (random token ids), else None."""
    api: Literal["completions", "chat"] | None = None
    """The API this request must go to (chat messages: chat); None: the run's choice."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """The record's own sampling fields (`Record.sampling`), sent over the run's settings."""


def _length_range(length: int, range_ratio: float, minimum: int) -> tuple[int, int]:
    """vLLM's integer range around a mean length: [floor(l(1-r)), ceil(l(1+r))]."""
    low = max(math.floor(length * (1 - range_ratio)), minimum)
    return low, max(math.ceil(length * (1 + range_ratio)), low)


def random_requests(
    n: int,
    input_len: int,
    output_len: int,
    vocab: Sequence[int] | int,
    seed: int = 0,
    range_ratio: float = 0.0,
) -> list[BenchRequest]:
    """`n` prompts of exactly `input_len` random token ids (uniform over `vocab`: the allowed
    ids, or `range(vocab)`), each asking for `output_len` tokens.

    With `range_ratio` r > 0 each request's lengths are drawn uniformly from
    [floor(len * (1 - r)), ceil(len * (1 + r))], as `vllm bench serve --random-range-ratio`
    draws them (the output at least 1). The same arguments always give the same requests.
    """
    if n < 1:
        raise ValueError(f"the number of requests must be 1 or more, not {n}")
    if input_len < 1 or output_len < 1:
        raise ValueError(
            f"input and output lengths must be 1 token or more, not {input_len} and {output_len}"
        )
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be within [0, 1), not {range_ratio}")
    allowed = list(range(vocab)) if isinstance(vocab, int) else list(vocab)
    if not allowed:
        raise ValueError("the vocabulary to draw prompt tokens from is empty")
    in_low, in_high = _length_range(input_len, range_ratio, 0)
    out_low, out_high = _length_range(output_len, range_ratio, 1)
    if in_low < 1:
        raise ValueError(
            f"input_len {input_len} with range_ratio {range_ratio} allows empty prompts: "
            "raise the input length or lower the range ratio"
        )
    rng = random.Random(seed)
    requests: list[BenchRequest] = []
    for i in range(n):
        length = rng.randint(in_low, in_high) if in_high > in_low else in_low
        out = rng.randint(out_low, out_high) if out_high > out_low else out_low
        ids = rng.choices(allowed, k=length)
        requests.append(
            BenchRequest(source=f"random:{i}", output_len=out, prompt=ids, prompt_len=length)
        )
    return requests


def vocabulary(tokenizer_path: str) -> list[int]:
    """The ids of a Hugging Face tokenizer's vocabulary minus its special ids (vLLM's choice:
    `range(tokenizer.vocab_size)` without `all_special_ids`)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise InputError(
            f"reading the tokenizer {tokenizer_path} needs transformers ({exc}): "
            "pip install transformers"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad path
        raise InputError(
            f"cannot load a tokenizer from {tokenizer_path} ({type(exc).__name__}: "
            f"{str(exc)[:300]}); pass the model's directory (holding tokenizer.json or "
            "tokenizer_config.json) or a model id in the Hugging Face cache"
        ) from exc
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(int(tokenizer.vocab_size)) if i not in special]
    if not ids:
        raise InputError(f"the tokenizer at {tokenizer_path} has no non-special token ids")
    return ids


@dataclass(frozen=True)
class FileRequests:
    """The usable requests of input files, the bad records (each `file:line: why`) and
    whether reading stopped early, having found `limit` usable ones."""

    requests: list[BenchRequest]
    errors: list[str]
    stopped_early: bool = False


def file_requests(
    paths: Sequence[Path],
    output_len: int | None,
    *,
    fmt: str | None = None,
    prompt_field: str | None = None,
    template: PromptTemplate | None = None,
    max_tokens_field: str | None = "max_tokens",
    limit: int | None = None,
    cwd: Path | None = None,
) -> FileRequests:
    """Requests from input files, read as `hpcinfer run` reads them, at most `limit`.

    A record's own `max_tokens_field` (default "max_tokens") sets its output length, else
    `output_len`. Chat records go to the chat API; prompts to the run's. Bad records do not
    abort: each comes back as an error string naming `file:line` and the fix. Whole-file
    problems (a missing file, a CSV without the prompt column) raise InputError.
    """
    from hpcinfer.inputs.options import apply_max_tokens_field
    from hpcinfer.inputs.readers import read_records

    if output_len is not None and output_len < 1:
        raise ValueError(f"the output length must be 1 token or more, not {output_len}")
    records = read_records(
        paths,
        cwd=cwd,
        fmt=fmt,
        prompt_field=prompt_field,
        template=template,
        max_tokens_field=max_tokens_field,
    )
    requests: list[BenchRequest] = []
    errors: list[str] = []
    for record in apply_max_tokens_field(records, max_tokens_field):
        if limit is not None and len(requests) >= limit:
            return FileRequests(requests, errors, stopped_early=True)
        where = record.where
        if record.error is not None:
            error = record.error
            errors.append(error if error.startswith(where) else f"{where}: {error}")
            continue
        length = record.max_tokens or output_len
        if length is None:
            field_hint = f'a "{max_tokens_field}" field' if max_tokens_field else "a length field"
            errors.append(
                f"{where}: no output length: give the record {field_hint} or set an output "
                "length for the whole file"
            )
            continue
        requests.append(
            BenchRequest(
                source=where,
                output_len=length,
                prompt=record.prompt,
                messages=record.messages,
                api="chat" if record.messages is not None else None,
                sampling=record.sampling,
            )
        )
    return FileRequests(requests, errors)


def jsonl_requests(
    path: Path,
    output_len: int | None,
    *,
    max_tokens_field: str | None = "max_tokens",
    prompt_field: str | None = None,
    cwd: Path | None = None,
) -> tuple[list[BenchRequest], list[str]]:
    """Requests from one JSONL file of `{"prompt": ...}` or `{"messages": [...]}` objects
    (`file_requests` for one file read as JSONL, chat records to the chat API)."""
    found = file_requests(
        [path],
        output_len,
        fmt="jsonl",
        prompt_field=prompt_field,
        max_tokens_field=max_tokens_field,
        cwd=cwd,
    )
    return found.requests, found.errors


def cycled(requests: Sequence[BenchRequest], count: int) -> list[BenchRequest]:
    """`count` requests: the given ones in order, again from the first as often as needed
    (a small file still gives the number of requests asked for)."""
    if not requests:
        raise ValueError("no requests to cycle through")
    return [requests[i % len(requests)] for i in range(count)]
