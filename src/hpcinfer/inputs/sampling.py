"""Per-record sampling fields: a record's own temperature, n, logprobs, JSON schema, LoRA ...

A JSONL key, CSV/TSV/Parquet column or OpenAI Batch body field with one of these names
overrides the job's `sampling` section for that record only (as `vllm run-batch` and Ray
Data LLM users expect). Values are checked here, once, when the input is read: a bad value
makes that record an error row naming the field and what it accepts, and never reaches an
engine. CSV cells arrive as text, so numbers, booleans and JSON lists/objects are read from
text too; an empty cell (or null) means "not set".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from hpcinfer.core.openai_wire import MAX_LOGPROBS
from hpcinfer.records import Record

MAX_N = 128

STRUCTURED_FIELDS = ("json_schema", "regex", "choice")
"""Structured output (vLLM guided decoding): at most one per record."""


class SamplingFieldError(ValueError):
    """One field's value is not acceptable; the message names the field and the range."""


def _number(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise SamplingFieldError(f"{name}={raw!r} is a boolean, not a number")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise SamplingFieldError(f"{name}={raw!r} is not a number") from None
    else:
        raise SamplingFieldError(f"{name}={raw!r} is not a number")
    if not math.isfinite(value):
        raise SamplingFieldError(f"{name}={raw!r} is not a finite number")
    return value


def _integer(name: str, raw: Any) -> int:
    value = _number(name, raw)
    if value != int(value):
        raise SamplingFieldError(f"{name}={raw!r} is not a whole number")
    return int(value)


def _ranged(
    kind: Callable[[str, Any], float | int], low: float, high: float | None, text: str
) -> Callable[[str, Any], Any]:
    def check(name: str, raw: Any) -> Any:
        value = kind(name, raw)
        if value < low or (high is not None and value > high):
            raise SamplingFieldError(f"{name}={raw!r} is out of range; give {text}")
        return value

    return check


def _temperature(name: str, raw: Any) -> float:
    return float(_ranged(_number, 0.0, None, "a number >= 0")(name, raw))


def _top_p(name: str, raw: Any) -> float:
    value = _number(name, raw)
    if not 0 < value <= 1:
        raise SamplingFieldError(f"{name}={raw!r} is out of range; give a number in (0, 1]")
    return value


def _top_k(name: str, raw: Any) -> int:
    value = _integer(name, raw)
    if value < -1:
        raise SamplingFieldError(
            f"{name}={raw!r} is out of range; give a whole number >= 1 (-1 or 0: no limit)"
        )
    return value


def _seed(name: str, raw: Any) -> int:
    return _integer(name, raw)


def _logprobs(name: str, raw: Any) -> int | None:
    if raw is True or (isinstance(raw, str) and raw.strip().lower() == "true"):
        return 0  # the sampled token's log-probability, no alternatives
    if raw is False or (isinstance(raw, str) and raw.strip().lower() == "false"):
        return None
    value = _integer(name, raw)
    if not 0 <= value <= MAX_LOGPROBS:
        raise SamplingFieldError(
            f"{name}={raw!r} is out of range; give true or the number of top alternatives "
            f"per token, 0 to {MAX_LOGPROBS}"
        )
    return value


def _stop(name: str, raw: Any) -> list[str]:
    value = _json_text(raw, "[")
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise SamplingFieldError(
            f"{name}={raw!r} is not a stop string or a list of non-empty stop strings"
        )
    return value


def _json_schema(name: str, raw: Any) -> dict[str, Any]:
    value = _json_text(raw, "{")
    if not isinstance(value, dict):
        raise SamplingFieldError(
            f"{name}={_short(raw)} is not a JSON schema; give a JSON object such as "
            '{"type": "object", "properties": {...}}'
        )
    return value


def _regex(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise SamplingFieldError(f"{name}={raw!r} is not a regular expression (a string)")
    try:
        re.compile(raw)
    except re.error as exc:
        raise SamplingFieldError(f"{name}={raw!r} does not compile: {exc}") from None
    return raw


def _choice(name: str, raw: Any) -> list[str]:
    value = _json_text(raw, "[")
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise SamplingFieldError(
            f"{name}={_short(raw)} is not a choice list; give a JSON list of strings, e.g. "
            '["yes", "no"]'
        )
    return value


def _name(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise SamplingFieldError(f"{name}={raw!r} is not a name (a non-empty string)")
    return raw.strip()


def _text(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise SamplingFieldError(f"{name}={_short(raw)} is not a non-empty string")
    return raw


SAMPLING_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "temperature": _temperature,
    "top_p": _top_p,
    "top_k": _top_k,
    "seed": _seed,
    "stop": _stop,
    "max_tokens": _ranged(_integer, 1, None, "a whole number >= 1"),
    "min_tokens": _ranged(_integer, 0, None, "a whole number >= 0"),
    "n": _ranged(_integer, 1, MAX_N, f"a whole number from 1 to {MAX_N}"),
    "logprobs": _logprobs,
    "presence_penalty": _ranged(_number, -2.0, 2.0, "a number in [-2, 2]"),
    "frequency_penalty": _ranged(_number, -2.0, 2.0, "a number in [-2, 2]"),
    "repetition_penalty": _ranged(_number, 1e-9, None, "a number > 0"),
    "json_schema": _json_schema,
    "regex": _regex,
    "choice": _choice,
    "lora": _name,
    "chat_template": _text,
}
"""The per-record fields, each with its check (which also converts CSV text)."""


def parse_sampling(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The checked sampling fields among `values` (absent, null and empty cells left out).

    Raises SamplingFieldError naming the first bad field; `prefix` (e.g. "body.") is put
    before field names in messages."""
    chosen: dict[str, Any] = {}
    for name, check in SAMPLING_FIELDS.items():
        raw = values.get(name)
        if raw is None or raw == "":  # an empty CSV cell: not set
            continue
        value = check(prefix + name, raw)
        if value is not None:
            chosen[name] = value
    structured = [name for name in STRUCTURED_FIELDS if name in chosen]
    if len(structured) > 1:
        raise SamplingFieldError(
            f"{' and '.join(prefix + name for name in structured)} are both set; a record "
            "takes one structured output (json_schema, regex or choice)"
        )
    if "chat_template" in chosen and "messages" not in values:
        raise SamplingFieldError(
            f"{prefix}chat_template is set on a record without chat messages; a chat template "
            "applies to 'messages' only"
        )
    return chosen


def apply_sampling(record: Record, values: Mapping[str, Any], prefix: str = "") -> Record:
    """`record` with its own sampling fields (they stay in `fields` too, as the input gave
    them); an error row if one is bad. max_tokens goes to Record.max_tokens (the budget
    every engine honours)."""
    try:
        sampling = parse_sampling(values, prefix)
    except SamplingFieldError as exc:
        return replace(
            record,
            prompt=None,
            messages=None,
            error=f"{record.where}: {exc}; fix the value or remove it to use the job's "
            "sampling settings",
        )
    if not sampling:
        return record
    max_tokens = sampling.pop("max_tokens", record.max_tokens)
    return replace(record, sampling=sampling, max_tokens=max_tokens)


def take_sampling(record: Record, skip: Collection[str] = ()) -> Record:
    """Apply the sampling fields found among a record's own fields (JSONL keys, columns),
    except the keys in `skip`: a key the job already reads as the prompt, id or max-tokens
    field (`--max-tokens-field n`) means that, not a sampling setting."""
    keys = [name for name in SAMPLING_FIELDS if name in record.fields and name not in skip]
    if record.error is not None or not keys:
        return record
    values = {key: value for key, value in record.fields.items() if key not in skip}
    if record.messages is not None:
        values["messages"] = record.messages
    return apply_sampling(record, values)


def _json_text(raw: Any, opener: str) -> Any:
    """A CSV cell holding JSON (a list or object) as text is read as that JSON."""
    if isinstance(raw, str) and raw.lstrip().startswith(opener):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SamplingFieldError(f"{_short(raw)} is not valid JSON: {exc.msg}") from None
    return raw


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."
