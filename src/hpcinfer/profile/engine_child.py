"""The engine side of `hpcinfer profile run`: one offline vLLM engine (`LLM`) in a child
process, driven through warm-up, timed and profiled iterations.

Run as `python -m hpcinfer.profile.engine_child JOB.json EVENTS.jsonl` (possibly under
`nsys profile`, hence files rather than inherited descriptors). It writes JSON lines to
EVENTS: `ready` (start-up phases, versions, driver and communication library), `iteration`
(progress), `done` (every measurement), `error`. vLLM's log goes to the child's
stdout/stderr (the parent's log file).

Each iteration is a batch as `bench offline` times one (`engines.batch_steps`): `batch_size`
requests of exactly `seq_len` fresh random token ids, `max_tokens` with `ignore_eos`, each
request's TTFT from the step its first token came out in. The timed iterations run
without the profiler; then vLLM's torch profiler runs in every worker for the profiled
iterations; then, apart, one iteration under torch's execution-trace observer (so neither
recorder's cost lands in the other's figures).
The child ignores SIGINT: the parent decides when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcinfer.core.startup_phases import StartupClock
from hpcinfer.engines.batch_steps import (
    FinishedRequest,
    allowed_token_ids,
    random_prompts,
    shutdown_engine,
    step_batch,
)
from hpcinfer.profile.platform_info import platform_versions

EXTENSION = "hpcinfer.profile.worker_extension.ProfileWorkerExtension"


@dataclass(frozen=True)
class ProfileJob:
    llm_kwargs: dict[str, Any]
    batch_size: int
    seq_len: int
    max_tokens: int
    warmup_iterations: int
    timed_iterations: int
    profile_iterations: int
    out_dir: str
    seed: int = 0
    execution_trace: bool = True

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProfileJob:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Iteration:
    wall_s: float
    requests: list[FinishedRequest]

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "requests": [asdict(r) for r in self.requests]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Iteration:
        return cls(data["wall_s"], [FinishedRequest(**r) for r in data["requests"]])


class _Events:
    def __init__(self, path: Path) -> None:
        self._out = path.open("a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **payload: Any) -> None:
        self._out.write(json.dumps({"event": event, **payload}) + "\n")
        self._out.flush()


class _Engine:
    def __init__(self, job: ProfileJob, clock: StartupClock) -> None:
        with clock.imports():
            import vllm
            from vllm import LLM, SamplingParams

        self.vllm_version = str(getattr(vllm, "__version__", "unknown"))
        with clock.engine():
            self.llm = LLM(**job.llm_kwargs)
        self._engine = self.llm.llm_engine
        self.params = SamplingParams(
            max_tokens=job.max_tokens, ignore_eos=True, temperature=0.0, seed=job.seed
        )
        self.delta = True
        try:
            from vllm.sampling_params import RequestOutputKind

            self.params.output_kind = RequestOutputKind.DELTA
        except (ImportError, AttributeError):  # older vLLM: cumulative outputs
            self.delta = False
        config = self._engine.model_config
        self.dtype = str(config.dtype).removeprefix("torch.")
        tokenizer = self.llm.get_tokenizer()
        vocab = min(int(tokenizer.vocab_size), int(config.get_vocab_size()))
        self.allowed = allowed_token_ids(vocab, getattr(tokenizer, "all_special_ids", ()))
        self._job = job

    def iteration(self, key: str) -> Iteration:
        """One batch: every prompt submitted at once, the engine stepped until all finish."""
        job = self._job
        key = f"{job.seed}/{key}"
        prompts = random_prompts(self.allowed, job.batch_size, job.seq_len, key)
        start = time.perf_counter()
        done = step_batch(self._engine, prompts, self.params, key, self.delta)
        return Iteration(time.perf_counter() - start, done)

    def close(self) -> None:
        shutdown_engine(self._engine)


def _phase(engine: _Engine, events: _Events, name: str, count: int) -> list[Iteration]:
    done = []
    for index in range(1, count + 1):
        sample = engine.iteration(f"{name}/{index}")
        done.append(sample)
        events.emit("iteration", phase=name, index=index, count=count, wall_s=sample.wall_s)
    return done


def _execution_trace(engine: _Engine, events: _Events, out_dir: str) -> dict[str, Any]:
    """One extra iteration under torch's ExecutionTraceObserver in every worker."""
    started = engine.llm.collective_rpc("hpcinfer_start_execution_trace", args=(out_dir,))
    if not any(started):
        return {"files": [], "note": "this torch has no ExecutionTraceObserver"}
    try:
        _phase(engine, events, "execution-trace", 1)
    finally:
        files = engine.llm.collective_rpc("hpcinfer_stop_execution_trace")
    return {"files": [f for f in files if f], "note": None}


def run(job: ProfileJob, events: _Events) -> None:
    clock = StartupClock()  # vLLM logs to our stdout: the run's engine log
    engine = _Engine(job, clock)
    import torch  # imported already: vLLM runs on it

    events.emit(
        "ready",
        startup_s=clock.engine_s,
        vllm_version=engine.vllm_version,
        dtype=engine.dtype,
        platform=platform_versions(torch),
    )
    try:
        warmup = _phase(engine, events, "warm-up", job.warmup_iterations)
        timed = _phase(engine, events, "timed", job.timed_iterations)
        # the first token of the engine's first batch: cold-start cost past start-up
        first_batch = (warmup or timed)[0]
        clock.first_token(min(r.ttft_s for r in first_batch.requests))
        engine.llm.start_profile()
        try:
            profiled = _phase(engine, events, "profiled", job.profile_iterations)
        finally:
            engine.llm.stop_profile()  # every worker writes its trace before this returns
        rank_files = engine.llm.collective_rpc("hpcinfer_write_rank_files", args=(job.out_dir,))
        et = (
            _execution_trace(engine, events, job.out_dir)
            if job.execution_trace
            else {"files": [], "note": "not asked for"}
        )
        events.emit(
            "done",
            startup=clock.phases().model_dump(),
            timed=[i.as_dict() for i in timed],
            profiled=[i.as_dict() for i in profiled],
            rank_files=rank_files,
            execution_trace=et,
        )
    finally:
        engine.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if need be
    job = ProfileJob.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    events = _Events(Path(argv[1]))
    try:
        run(job, events)
    except Exception as exc:
        traceback.print_exc()
        events.emit("error", message=f"{type(exc).__name__}: {exc}")
        code = 1
    else:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown of torch and vLLM (seconds; nothing to save)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
