"""A record's own sampling fields as vLLM request arguments, and vLLM outputs as a Result.

The offline engine's half of per-record sampling (`inputs.sampling` checks the values when
the input is read): the job's SamplingParams with the record's fields over them, a
structured-output constraint through vLLM's guided decoding, a LoRA adapter chosen by name,
and every sample and log-probability of the answer kept in the Result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hpcinfer.records import Record, Result

_STRUCTURED = {"json_schema": "json", "regex": "regex", "choice": "choice"}
"""Our per-record names -> vLLM StructuredOutputsParams fields."""
_PLAIN = (
    "temperature", "top_p", "top_k", "seed", "stop", "min_tokens", "n", "logprobs",
    "presence_penalty", "frequency_penalty", "repetition_penalty",
)  # fmt: skip
_CACHE_LIMIT = 1024


class RecordRejected(ValueError):
    """The record asks for something this engine is not set up for (an error row)."""


def record_kwargs(base: Mapping[str, Any], record: Record) -> dict[str, Any]:
    """SamplingParams keyword arguments: the job's (`base`), then the record's own."""
    kwargs = dict(base)
    if record.max_tokens is not None:
        kwargs["max_tokens"] = record.max_tokens
    for name in _PLAIN:
        if name in record.sampling:
            kwargs[name] = record.sampling[name]
    if kwargs.get("top_k") == 0:
        kwargs["top_k"] = -1  # 0 means "no limit" in the spec and the input; vLLM says -1
    return kwargs


def structured_kwargs(record: Record) -> dict[str, Any] | None:
    """StructuredOutputsParams keyword arguments for the record's constraint, if any."""
    for ours, theirs in _STRUCTURED.items():
        if ours in record.sampling:
            value = record.sampling[ours]
            return {theirs: json.dumps(value) if ours == "json_schema" else value}
    return None


class LoraChooser:
    """LoRA adapters by name (`engine.lora_adapters`); ids are fixed by the sorted names."""

    def __init__(self, adapters: Mapping[str, str], request_type: Any) -> None:
        self._adapters = dict(adapters)
        self._ids = {name: i for i, name in enumerate(sorted(adapters), start=1)}
        self._type = request_type
        self._made: dict[str, Any] = {}

    def request_for(self, record: Record) -> Any:
        name = record.sampling.get("lora")
        if name is None:
            return None
        if not self._adapters:
            raise RecordRejected(
                f"lora={name!r} but the job has no LoRA adapters; enable LoRA by naming the "
                f"adapter's directory: --set engine.lora_adapters.{name}=/path/to/adapter"
            )
        if name not in self._adapters:
            raise RecordRejected(
                f"lora={name!r} is not one of the job's adapters "
                f"({', '.join(sorted(self._adapters))}); fix the name or add it with "
                f"--set engine.lora_adapters.{name}=/path/to/adapter"
            )
        if name not in self._made:
            self._made[name] = self._type(name, self._ids[name], self._adapters[name])
        return self._made[name]


class ParamsCache:
    """SamplingParams per distinct set of record fields, built once each (validated by
    vLLM as they are built: a value vLLM refuses is that record's error row)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._cache: dict[str, Any] = {}

    def get(self, kwargs: dict[str, Any], structured: dict[str, Any] | None) -> Any:
        key = json.dumps([kwargs, structured], sort_keys=True, default=str)
        params = self._cache.get(key)
        if params is None:
            params = self._make(kwargs, structured)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = params
        return params


def fill_samples(result: Result, completions: list[Any], logprobs: int | None) -> None:
    """Every sample of an answer into `result` (n > 1), with log-probabilities when asked
    (`logprobs`: how many top alternatives per token)."""
    if len(completions) > 1:
        result.texts = [c.text for c in completions]
        result.finish_reasons = [c.finish_reason for c in completions]
        result.output_tokens = sum(len(c.token_ids) for c in completions)
    if logprobs is not None:
        result.logprobs = [token_logprobs(c, logprobs) for c in completions]


def token_logprobs(completion: Any, top: int) -> list[dict[str, Any]]:
    """Per generated token: {token, logprob, top_logprobs: [{token, logprob}, ...]} (the
    shape of the OpenAI chat API's `logprobs.content`)."""
    entries = completion.logprobs or []
    tokens: list[dict[str, Any]] = []
    for token_id, position in zip(completion.token_ids, entries, strict=False):
        if not position:
            continue
        chosen = position.get(token_id)
        ranked = sorted(
            (lp for lp in position.values() if 0 < (getattr(lp, "rank", None) or 0) <= top),
            key=lambda lp: lp.rank,
        )
        tokens.append(
            {
                "token": getattr(chosen, "decoded_token", None) or "",
                "logprob": float(chosen.logprob) if chosen is not None else None,
                "top_logprobs": [
                    {"token": lp.decoded_token or "", "logprob": float(lp.logprob)} for lp in ranked
                ],
            }
        )
    return tokens
