"""A record's own sampling fields as vLLM request arguments; vLLM outputs into a Result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.engines.record_params import (
    LoraChooser,
    RecordRejected,
    fill_samples,
    record_kwargs,
    structured_kwargs,
)
from hpcinfer.engines.vllm_offline import EngineSetup, llm_kwargs
from hpcinfer.records import Record, Result
from hpcinfer.spec import EngineSpec, SamplingSpec


def rec(**sampling: Any) -> Record:
    return Record("r", "in.jsonl", 3, prompt="p", sampling=sampling)


def test_record_fields_override_the_job_sampling() -> None:
    base = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256, "ignore_eos": False}
    record = Record("r", "f", 1, prompt="p", max_tokens=9, sampling={"n": 2, "top_k": 0})
    assert record_kwargs(base, record) == {
        "temperature": 1.0, "top_p": 1.0, "max_tokens": 9, "ignore_eos": False,
        "n": 2, "top_k": -1,
    }  # fmt: skip
    assert structured_kwargs(rec(json_schema={"type": "object"})) == {"json": '{"type": "object"}'}
    assert structured_kwargs(rec(choice=["a"])) == {"choice": ["a"]}
    assert structured_kwargs(rec(temperature=0.0)) is None


def test_lora_needs_the_adapter_named_in_the_spec(tmp_path: Path) -> None:
    none = LoraChooser({}, lambda *a: a)
    with pytest.raises(RecordRejected, match=r"--set engine.lora_adapters.sql=/path/to/adapter"):
        none.request_for(rec(lora="sql"))
    chooser = LoraChooser({"sql": "/a/sql", "chat": "/a/chat"}, lambda *a: a)
    assert chooser.request_for(rec(lora="sql")) == ("sql", 2, "/a/sql")
    assert chooser.request_for(rec()) is None
    with pytest.raises(RecordRejected, match=r"lora='x' is not one of the job's adapters \(chat"):
        chooser.request_for(rec(lora="x"))
    (tmp_path / "adapter_config.json").write_text('{"r": 20, "target_modules": ["q_proj"]}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"{}")
    engine = EngineSpec(lora_adapters={"sql": str(tmp_path)})
    kwargs = llm_kwargs(EngineSetup("/m", "m", engine, SamplingSpec(), False))
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 1, 32)
    on_cpu = llm_kwargs(EngineSetup("/m", "m", engine, SamplingSpec(), True))
    assert on_cpu["max_loras"] == 2  # a spare, empty slot: what vLLM's CPU kernels read for -1


@dataclass
class Lp:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, Lp]] | None = field(default=None)


def test_every_sample_and_its_logprobs_reach_the_result() -> None:
    positions = [
        {5: Lp(-0.1, 1, "a"), 6: Lp(-2.0, 2, "b")},
        {7: Lp(-3.0, 4, "c"), 8: Lp(-1.0, 1, "d")},
    ]
    samples = [
        Completion("ac", [5, 7], "length", positions),
        Completion("a", [5], "stop", positions[:1]),
    ]
    result = Result("r", text="ac", output_tokens=2)
    fill_samples(result, samples, logprobs=1)
    assert result.texts == ["ac", "a"] and result.finish_reasons == ["length", "stop"]
    assert result.output_tokens == 3
    assert result.logprobs is not None
    assert result.logprobs[0] == [
        {"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}]},
        {"token": "c", "logprob": -3.0, "top_logprobs": [{"token": "d", "logprob": -1.0}]},
    ]
    single = Result("r", text="ac", output_tokens=2)
    fill_samples(single, samples[:1], logprobs=None)
    assert (single.texts, single.logprobs, single.output_tokens) == (None, None, 2)
