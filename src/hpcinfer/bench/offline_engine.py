"""Timed batches on one in-process vLLM engine, run in a child process of its own.

Why a child: the device binding (VLLM_CPU_OMP_THREADS_BIND, CUDA_VISIBLE_DEVICES, ...) and
VLLM_ENABLE_V1_MULTIPROCESSING must be in the environment before vLLM is imported, as for
`hpcinfer run`'s workers; `hpcinfer bench fom` needs one engine per max-model-len, and a
fresh process per engine frees all of one (TP workers, memory, distributed state) before
the next starts; an engine that crashes takes only its child down, and the parent names
its log. vLLM is imported in the child only.

The child builds `vllm.LLM(**llm_kwargs)` (the kwargs come from the same adapter as `run`:
`engines.vllm_offline.llm_kwargs`) and drives `llm_engine.add_request()/step()` itself, so it
sees when each request's first and last tokens come out. Prompts are random token ids
(special ids excluded) of exactly the asked length, fresh for every request and iteration
(seeded), so no iteration is served from the prefix cache of an earlier one; sampling uses
`ignore_eos` and `max_tokens` = the output length.

Protocol: the parent writes an `EngineJob` as JSON to the child's stdin; the child writes
JSON lines to the file descriptor named on its command line: `ready` (engine facts),
`startup` (the start-up phases, complete once the first batch's first token is out),
`iteration` (progress), `case` (one case's samples), `error` (why it stopped, and whether
the flags were at fault). The child's stdout and stderr (vLLM's log) go to a log file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from hpcinfer.bench.samples import IterationSample
from hpcinfer.core.processes import spawn
from hpcinfer.core.startup_phases import StartupClock
from hpcinfer.engines.batch_steps import (
    allowed_token_ids,
    random_prompts,
    shutdown_engine,
    step_batch,
)
from hpcinfer.errors import EngineError, SpecError
from hpcinfer.logtail import log_tail


@dataclass(frozen=True)
class BatchCase:
    """A batch shape to time: `batch_size` prompts of exactly `input_len` tokens, each
    generating exactly `output_len` tokens."""

    name: str
    input_len: int
    output_len: int
    batch_size: int


@dataclass(frozen=True)
class EngineJob:
    """Everything the child needs: how to build the engine and what to time on it."""

    llm_kwargs: dict[str, Any]
    cases: tuple[BatchCase, ...]
    warmup_iters: int
    iters: int
    seed: int = 0
    temperature: float = 0.0

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineJob:
        data = json.loads(text)
        data["cases"] = tuple(BatchCase(**case) for case in data["cases"])
        return cls(**data)


@dataclass(frozen=True)
class EngineInfo:
    """What the started engine says about itself (the model's shape for the FLOP FOM, its
    dtype for the FOM CSV's precision column, its context length)."""

    max_model_len: int
    dtype: str
    text_config: dict[str, Any]
    vllm_version: str
    startup_s: float
    startup: dict[str, Any] | None = None  # StartupPhases: imports, model load, ...


@dataclass
class EngineRun:
    """The engine's facts and each case's timed iterations (warm-ups are not kept)."""

    info: EngineInfo
    cases: dict[str, list[IterationSample]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# the parent side


def _format_progress(event: Mapping[str, Any]) -> str:
    return (
        f"{event['case']}: {event['phase']} {event['index']}/{event['count']}: "
        f"{event['latency_s']:.3f} s"
    )


def run_engine(
    job: EngineJob,
    env: Mapping[str, str],
    log: Path,
    progress: Callable[[str], None],
    cores: Iterable[int] | None = None,
) -> EngineRun:
    """Start the child (on `cores`, when given), time every case of `job` on its engine,
    return what it measured.

    Raises SpecError when the child found the flags at fault (a case longer than the
    engine's context), EngineError when the engine failed (with the end of its log)."""
    read_fd, write_fd = os.pipe()
    try:
        child = spawn(
            [sys.executable, "-m", "hpcinfer.bench.offline_engine", str(write_fd)],
            env=env,
            log=log,
            cores=cores,
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            death_signal=signal.SIGKILL,  # it ignores SIGINT: the parent decides
        )
    finally:
        os.close(write_fd)
    try:
        stdin = child.proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.write(job.as_json().encode())
            stdin.close()
        with os.fdopen(read_fd, "rb") as reader:
            run, error = _read_events(reader, progress)
        child.wait(None)
        code = child.returncode
    finally:
        # interrupted: the engine goes with us; done: so does what it left (an EngineCore)
        child.stop(0.0, first_signal=None)
    if error is not None:
        if error.get("usage"):
            raise SpecError(str(error["message"]))
        raise EngineError(_failure(f"the engine failed: {error['message']}", log))
    if run is None or len(run.cases) != len(job.cases) or code != 0:
        raise EngineError(_failure(f"the engine process exited with code {code}", log))
    return run


_EXCEPTION_LINE = re.compile(r"(?:^|\] )\s*(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)\b(?::.*)?$")
_WRAPPER_ERRORS = ("EngineDeadError", "EngineGenerateError")


def first_error(log: Path) -> str | None:
    """The first exception line in an engine log (a TP/PP worker's root cause comes before
    the engine's `EngineDeadError ... see stack trace above`), or None."""
    try:
        with log.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                text = line.strip()
                if _EXCEPTION_LINE.search(text) and not any(w in text for w in _WRAPPER_ERRORS):
                    return text[:400]
    except OSError:
        return None
    return None


def _failure(message: str, log: Path) -> str:
    """The message, the root cause when the message does not give it (the engine died, or
    says only 'see the stack trace above'), and the end of the log."""
    explained = "exited with code" not in message and not any(
        wrapper in message for wrapper in _WRAPPER_ERRORS
    )
    cause = None if explained else first_error(log)
    tail = log_tail(log, lines=15)
    return (
        f"{message} (log: {log})"
        + (f"\nfirst error in the log: {cause}" if cause else "")
        + (f"\nlast log lines:\n{tail}" if tail else "")
    )


def _read_events(
    reader: IO[bytes], progress: Callable[[str], None]
) -> tuple[EngineRun | None, dict[str, Any] | None]:
    run: EngineRun | None = None
    for line in reader:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = event.pop("event", None)
        if kind == "ready":
            run = EngineRun(EngineInfo(**event))
            progress(
                f"engine ready in {run.info.startup_s:.1f} s (vLLM {run.info.vllm_version}, "
                f"{run.info.dtype}, max-model-len {run.info.max_model_len})"
            )
        elif kind == "startup" and run is not None:
            run.info = dataclasses.replace(run.info, startup=event["phases"])
        elif kind == "iteration":
            progress(_format_progress(event))
        elif kind == "case" and run is not None:
            run.cases[event["name"]] = [IterationSample.from_dict(i) for i in event["iterations"]]
        elif kind == "error":
            return run, event
    return run, None


# ---------------------------------------------------------------------------------------
# the child side


class _Events:
    """JSON lines to the parent, flushed one by one (progress must show as it happens)."""

    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def emit(self, event: str, **payload: Any) -> None:
        self._out.write(json.dumps({"event": event, **payload}) + "\n")
        self._out.flush()


class _Bench:
    """The engine, and timed batches on it."""

    def __init__(self, job: EngineJob) -> None:
        self.clock = StartupClock()  # vLLM logs to our stdout: the engine log
        with self.clock.imports():
            import vllm
            from vllm import LLM, SamplingParams

        with self.clock.engine():
            self._llm = LLM(**job.llm_kwargs)
        self.startup_s = self.clock.engine_s or 0.0
        self._first_batch = True
        self._engine = self._llm.llm_engine
        self._sampling_params = SamplingParams
        self._job = job
        config = self._engine.model_config
        self.max_model_len = int(config.max_model_len)
        self.dtype = str(config.dtype).removeprefix("torch.")
        self.vllm_version = str(getattr(vllm, "__version__", "unknown"))
        text = getattr(config, "hf_text_config", None) or config.hf_config
        self.text_config = {
            key: getattr(text, key)
            for key in ("num_hidden_layers", "hidden_size", "model_type")
            if isinstance(getattr(text, key, None), int | str)
        }
        tokenizer = self._llm.get_tokenizer()
        vocab = min(int(tokenizer.vocab_size), int(config.get_vocab_size()))
        self._allowed = allowed_token_ids(vocab, getattr(tokenizer, "all_special_ids", ()))
        self._delta = True

    def _params(self, case: BatchCase) -> Any:
        params = self._sampling_params(
            max_tokens=case.output_len,
            ignore_eos=True,
            temperature=self._job.temperature,
            seed=self._job.seed,
        )
        try:
            from vllm.sampling_params import RequestOutputKind

            params.output_kind = RequestOutputKind.DELTA
        except (ImportError, AttributeError):  # older vLLM: cumulative outputs
            self._delta = False
        return params

    def run_case(self, case: BatchCase, events: _Events) -> list[IterationSample]:
        params = self._params(case)
        timed: list[IterationSample] = []
        phases = (("warm-up", self._job.warmup_iters), ("iteration", self._job.iters))
        for phase, count in phases:
            for index in range(1, count + 1):
                key = f"{self._job.seed}/{case.name}/{phase}/{index}"
                prompts = random_prompts(self._allowed, case.batch_size, case.input_len, key)
                sample = self._batch(prompts, params, key)
                if self._first_batch:  # the first token after ready: start-up's last phase
                    self._first_batch = False
                    self.clock.first_token(min(r.ttft_s for r in sample.requests))
                    events.emit("startup", phases=self.clock.phases().model_dump())
                events.emit(
                    "iteration",
                    case=case.name,
                    phase=phase,
                    index=index,
                    count=count,
                    latency_s=sample.latency_s,
                )
                if phase == "iteration":
                    timed.append(sample)
        return timed

    def _batch(self, prompts: list[list[int]], params: Any, key: str) -> IterationSample:
        """Submit every prompt at once, step the engine until all are finished."""
        done = step_batch(self._engine, prompts, params, key, self._delta)
        return IterationSample(
            latency_s=max(r.e2e_s for r in done),
            requests=tuple(done),
        )

    def close(self) -> None:
        shutdown_engine(self._engine)


def _too_long(case: BatchCase, max_model_len: int) -> str | None:
    total = case.input_len + case.output_len
    if total <= max_model_len:
        return None
    return (
        f"{case.name}: input length {case.input_len} + output length {case.output_len} = "
        f"{total} tokens do not fit the engine's context of {max_model_len}: shorten "
        "--input-len/--output-len or raise --max-model-len"
    )


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown of torch and vLLM (seconds; nothing to save)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if need be
    events = _Events(int(argv[0]))
    job = EngineJob.from_json(sys.stdin.read())
    try:
        bench = _Bench(job)
    except Exception as exc:
        traceback.print_exc()
        events.emit("error", usage=False, message=f"{type(exc).__name__}: {exc}")
        return 1
    events.emit(
        "ready",
        max_model_len=bench.max_model_len,
        dtype=bench.dtype,
        text_config=bench.text_config,
        vllm_version=bench.vllm_version,
        startup_s=round(bench.startup_s, 3),
        startup=bench.clock.phases().model_dump(),
    )
    try:
        for case in job.cases:
            problem = _too_long(case, bench.max_model_len)
            if problem is not None:
                events.emit("error", usage=True, message=problem)
                return 2
            samples = bench.run_case(case, events)
            events.emit("case", name=case.name, iterations=[s.as_dict() for s in samples])
    except Exception as exc:
        traceback.print_exc()
        events.emit("error", usage=False, message=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        bench.close()
    _exit_now(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
