"""The vLLM offline adapter: one in-process vLLM engine driven request by request.

It uses only the long-stable `LLM`, `llm_engine.add_request/step` and `get_tokenizer` APIs
and reads optional fields (metrics) defensively, because sites run vLLM versions from 0.6
(Aurora XPU builds) to current. vLLM is imported here only, lazily.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.engines.cpu_memory import cpu_kv_cache_share
from hpcinfer.engines.lora_adapters import check_lora_adapters, lora_slots
from hpcinfer.engines.openai_engine import ClientSetup
from hpcinfer.engines.record_params import (
    LoraChooser,
    ParamsCache,
    RecordRejected,
    fill_samples,
    record_kwargs,
    structured_kwargs,
)
from hpcinfer.errors import EngineError
from hpcinfer.records import Record, Result
from hpcinfer.spec import EngineSpec, SamplingSpec


@dataclass(frozen=True)
class EngineSetup:
    """Everything needed to start one engine, resolved by the worker before vLLM is imported."""

    model_path: str
    model_name: str
    engine: EngineSpec
    sampling: SamplingSpec
    on_cpu: bool
    workers_on_node: int = 1
    client: ClientSetup | None = None  # set for the dispatcher engines (engine.kind openai)


def in_process_engine(setup: EngineSetup) -> bool:
    """On CPU with TP=1, running vLLM's engine core in the worker process starts in a third of
    the time (one vLLM import instead of three) and generates faster (no IPC per step)."""
    return setup.on_cpu and setup.engine.tensor_parallel_size == 1


def engine_env(setup: EngineSetup) -> dict[str, str]:
    """Environment the worker must set before importing vLLM."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process_engine(setup) else {}


def llm_kwargs(setup: EngineSetup) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`, from the spec plus this platform's defaults."""
    spec = setup.engine
    kwargs: dict[str, Any] = {
        "model": setup.model_path,
        "tokenizer": setup.model_path,
        "served_model_name": setup.model_name,
        "dtype": spec.dtype,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "trust_remote_code": spec.trust_remote_code,
        "seed": setup.sampling.seed if setup.sampling.seed is not None else 0,
    }
    if spec.max_model_len is not None:
        kwargs["max_model_len"] = spec.max_model_len
    if spec.max_num_seqs is not None:
        kwargs["max_num_seqs"] = spec.max_num_seqs
    eager = spec.enforce_eager if spec.enforce_eager is not None else setup.on_cpu
    if eager:
        kwargs["enforce_eager"] = True
    if spec.kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = spec.kv_cache_bytes
    elif spec.memory_share is not None:
        kwargs["gpu_memory_utilization"] = spec.memory_share
    elif setup.on_cpu:
        kwargs["gpu_memory_utilization"] = cpu_kv_cache_share(
            setup.workers_on_node, spec.tensor_parallel_size
        )
    if in_process_engine(setup):
        kwargs["distributed_executor_backend"] = "uni"
    if spec.lora_adapters:
        kwargs["enable_lora"] = True
        kwargs["max_loras"] = lora_slots(len(spec.lora_adapters), setup.on_cpu)
        kwargs["max_lora_rank"] = check_lora_adapters(spec.lora_adapters, Path.cwd())
    kwargs.update(spec.extra)
    return kwargs


def sampling_kwargs(sampling: SamplingSpec) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`; max_tokens is always explicit."""
    kwargs: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "ignore_eos": sampling.ignore_eos,
    }
    if sampling.top_k is not None and sampling.top_k > 0:
        kwargs["top_k"] = sampling.top_k
    if sampling.min_tokens:
        kwargs["min_tokens"] = sampling.min_tokens
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    return kwargs


@dataclass
class _Pending:
    record_id: str
    submitted: float
    logprobs: int | None = None


class VllmOfflineEngine:
    """Engine protocol over `vllm.LLM`; one per worker."""

    def __init__(self, setup: EngineSetup) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise EngineError(
                f"vLLM is not importable ({exc}); on a laptop install the CPU build with "
                "`pip install 'hpcinfer[cpu]'`, on a GPU system load the site's vLLM module"
            ) from exc
        self.model_name = setup.model_name
        self._llm = LLM(**llm_kwargs(setup))
        self._engine = self._llm.llm_engine
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self._base_kwargs = sampling_kwargs(setup.sampling)
        self._params = SamplingParams(**self._base_kwargs)
        _final_only(self._params)
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._by_fields = ParamsCache(_params_maker(SamplingParams))
        self._lora = LoraChooser(setup.engine.lora_adapters, LoRARequest)
        self._refusals = _request_refusals()
        self.first_token_s: float | None = None
        """The first request after start-up: submitted to its first token (start-up phases)."""
        self._first: _Pending | None = None
        self._first_id: str | None = None

    def _params_for(self, record: Record) -> Any:
        """The job's sampling params, or one built with the record's own fields over them."""
        if not record.sampling and record.max_tokens in (None, self._params.max_tokens):
            return self._params
        return self._by_fields.get(
            record_kwargs(self._base_kwargs, record), structured_kwargs(record)
        )

    def submit(self, records: Sequence[Record]) -> list[Result]:
        rejected: list[Result] = []
        for record in records:
            if record.error is not None:
                rejected.append(Result.failed(record.id, record.error))
                continue
            try:
                token_ids = self._tokenize(record)
            except Exception as exc:  # a tokenizer or chat-template failure is this record's
                rejected.append(Result.failed(record.id, f"{record.where}: cannot tokenize: {exc}"))
                continue
            if len(token_ids) >= self.max_model_len:
                rejected.append(
                    Result.failed(
                        record.id,
                        f"{record.where}: prompt has {len(token_ids)} tokens but the model's "
                        f"context is {self.max_model_len}; shorten the prompt or raise "
                        "--max-model-len",
                    )
                )
                continue
            request_id = str(next(self._ids))
            try:
                lora = self._lora.request_for(record)
            except RecordRejected as exc:
                rejected.append(Result.failed(record.id, f"{record.where}: {exc}"))
                continue
            try:
                params = self._params_for(record)
                timed = self._first_id is None and getattr(params, "n", 1) == 1
                if timed:
                    params = _every_step(params)  # to see its first token come out
                prompt = {"prompt_token_ids": token_ids}
                self._engine.add_request(request_id, prompt, params, lora_request=lora)
            except self._refusals as exc:
                rejected.append(
                    Result.failed(record.id, f"{record.where}: rejected by vLLM: {exc}")
                )
                continue
            logprobs = record.sampling.get("logprobs")
            self._pending[request_id] = _Pending(record.id, time.monotonic(), logprobs)
            if timed:
                self._first_id, self._first = request_id, self._pending[request_id]
        return rejected

    def poll(self) -> list[Result]:
        if not self._pending:
            return []
        finished: list[Result] = []
        for output in self._engine.step():
            if self._first is not None and output.request_id == self._first_id:
                self._time_first_token(output)
            if not getattr(output, "finished", False):
                continue
            pending = self._pending.pop(output.request_id, None)
            if pending is not None:
                finished.append(self._to_result(pending, output))
        return finished

    def inflight(self) -> int:
        return len(self._pending)

    def _time_first_token(self, output: Any) -> None:
        if self._first is not None and (output.finished or output.outputs[0].token_ids):
            self.first_token_s = round(time.monotonic() - self._first.submitted, 6)
            self._first = None

    def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None) or getattr(self._llm, "shutdown", None)
        if callable(shutdown):
            shutdown()

    def _tokenize(self, record: Record) -> list[int]:
        if record.messages is not None:
            text = self._tokenizer.apply_chat_template(
                record.messages,
                tokenize=False,
                add_generation_prompt=True,
                chat_template=record.sampling.get("chat_template"),
            )
            return list(self._tokenizer.encode(text, add_special_tokens=False))
        return list(self._tokenizer.encode(record.prompt or ""))

    def _to_result(self, pending: _Pending, output: Any) -> Result:
        completion = output.outputs[0]
        metrics = getattr(output, "metrics", None)
        ttft = getattr(metrics, "first_token_latency", None) if metrics is not None else None
        result = Result(
            id=pending.record_id,
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=len(output.prompt_token_ids or []),
            output_tokens=len(completion.token_ids),
            latency_s=round(time.monotonic() - pending.submitted, 6),
            ttft_s=round(float(ttft), 6) if ttft else None,
        )
        fill_samples(result, list(output.outputs), pending.logprobs)
        return result


def _request_refusals() -> tuple[type[Exception], ...]:
    """The exceptions vLLM raises for one bad request (that record's error row)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: ValueError only
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def _params_maker(sampling_params: Any) -> Any:
    """Builds SamplingParams (final outputs only) with an optional structured output."""

    def make(kwargs: dict[str, Any], structured: dict[str, Any] | None) -> Any:
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs = dict(kwargs, structured_outputs=StructuredOutputsParams(**structured))
        params = sampling_params(**kwargs)
        _final_only(params)
        return params

    return make


def _every_step(params: Any) -> Any:
    """A copy of `params` returning cumulative outputs at every step (the final one is the
    same as with final-only), so the first request's first token can be timed. Only for
    n == 1: with n > 1 vLLM's step outputs carry the samples that moved, and the final one
    lost the others (a record asking n=2 got one text)."""
    try:
        from vllm.sampling_params import RequestOutputKind

        params = params.clone()
        params.output_kind = RequestOutputKind.CUMULATIVE
    except (ImportError, AttributeError):  # older vLLM: cumulative already
        pass
    return params


def _final_only(params: Any) -> None:
    """Ask for final outputs only where the vLLM version supports it (fewer step outputs)."""
    try:
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
    except (ImportError, AttributeError):
        pass
