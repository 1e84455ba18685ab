"""An engine's start-up, phase by phase: imports, model load, KV cache, compilation, first token.

Cold start on an HPC node is often longer than the work, and which phase dominates decides
the cure (a staged model, a compile cache, fewer engines). The phases come from two sources:

- measured here, in the process that starts the engine: `imports_s` (importing vLLM, which
  imports torch), the engine's construction, `first_token_s` (the first request submitted
  after the engine is ready until its first token) and `total_s`;
- reported by vLLM in its log: model load, KV cache (vLLM's "init engine (profile, create kv
  cache, warmup model)" less its compilation), compilation and graph capture.

vLLM's own figures are read from the log the engine writes, not from a logging handler: the
EngineCore and the TP/PP workers are child processes whose records never reach a handler
in ours, but they write to the same stdout/stderr (a worker's, a benchmark engine's or a
server's log file), and vLLM's handler flushes every line. A phase vLLM did not report (an
older version, logging turned down, stdout not a file) is None, never estimated.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

_NUMBER = r"(\d+(?:\.\d+)?)"
# vLLM 0.6 - 0.32 wordings; every line may carry a "(EngineCore pid=..) INFO ... [file:line]"
# prefix, and TP/PP workers each log their own.
_MODEL_LOADING = re.compile(rf"Model loading took {_NUMBER} ?GiB(?: memory)? and {_NUMBER} s")
_INITIALIZING = re.compile(rf"Initializing model took {_NUMBER} s")
_WEIGHTS = re.compile(rf"Loading weights took {_NUMBER} s")
_INIT_ENGINE = re.compile(
    rf"init engine \(profile, create kv cache, warmup model\) took {_NUMBER} s"
    rf"(?: \(compilation: {_NUMBER} s)?"
)
_TORCH_COMPILE = re.compile(rf"torch\.compile take?s? {_NUMBER} s in total")
_GRAPH_CAPTURE = re.compile(rf"Graph capturing finished in {_NUMBER} secs")


class StartupPhases(BaseModel):
    """Seconds per start-up phase of one engine; None where it was not measured or reported.

    `imports_s + model_load_s + kv_cache_s + compile_s + first_token_s <= total_s`: total is
    the measured wall time of the imports, the engine's construction and the first token
    (servers: process start to ready); what vLLM does between its reported phases (process
    and tokenizer start-up, ...) is in the total only."""

    model_config = ConfigDict(extra="forbid")

    imports_s: float | None = Field(None, description="importing vLLM (and torch)")
    model_load_s: float | None = Field(None, description="building the model and its weights")
    kv_cache_s: float | None = Field(
        None, description="memory profiling, KV-cache creation and warm-up, less compilation"
    )
    compile_s: float | None = Field(None, description="torch.compile and graph capture")
    first_token_s: float | None = Field(
        None, description="first request after ready: submitted to first token"
    )
    total_s: float | None = Field(
        None, description="imports + engine construction + first token (servers: to ready)"
    )

    def reported(self) -> dict[str, float]:
        """The phases that have a value (total excluded), in start-up order."""
        values = self.model_dump(exclude={"total_s"})
        return {name: value for name, value in values.items() if value is not None}


def phases_from_log(lines: Iterable[str]) -> StartupPhases:
    """The phases vLLM reported in these log lines (model load, KV cache, compilation).

    Ranks load and compile in parallel, so each figure is the slowest rank's. Compilation
    is 0 when vLLM reported its engine start-up without a compilation part (it adds one
    whenever it compiled) and captured no graphs."""
    model_loading: list[float] = []
    initializing: list[float] = []
    weights: list[float] = []
    compiles: list[float] = []
    captures: list[float] = []
    init_engine: float | None = None
    init_compile: float | None = None
    for line in lines:
        if "took" not in line and "takes" not in line and "finished" not in line:
            continue
        for pattern, found in (
            (_INITIALIZING, initializing),
            (_WEIGHTS, weights),
            (_TORCH_COMPILE, compiles),
            (_GRAPH_CAPTURE, captures),
        ):
            match = pattern.search(line)
            if match:
                found.append(float(match.group(1)))
        if match := _MODEL_LOADING.search(line):
            model_loading.append(float(match.group(2)))
        if match := _INIT_ENGINE.search(line):
            init_engine = float(match.group(1))
            init_compile = float(match.group(2)) if match.group(2) else None
    model_load: float | None = None
    if model_loading:
        model_load = max(model_loading)
    elif initializing or weights:
        model_load = max(initializing, default=0.0) + max(weights, default=0.0)
    compile_s: float | None = None
    if init_compile is not None:
        compile_s = init_compile
    elif compiles:
        compile_s = max(compiles)
    if captures:
        compile_s = (compile_s or 0.0) + max(captures)
    elif compile_s is None and init_engine is not None:
        compile_s = 0.0
    kv_cache: float | None = None
    if init_engine is not None:
        kv_cache = max(0.0, init_engine - (compile_s or 0.0))
    return StartupPhases(
        model_load_s=_round(model_load), kv_cache_s=_round(kv_cache), compile_s=_round(compile_s)
    )


def phases_from_log_file(log: Path, offset: int = 0) -> StartupPhases:
    """`phases_from_log` over a log file from byte `offset` on (an appended log holds
    earlier starts); all None when the file cannot be read."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return StartupPhases()
    return phases_from_log(text.splitlines())


def server_startup(log: Path, ready_s: float | None) -> StartupPhases:
    """A server's start-up: what vLLM reported in its (fresh) log, and `ready_s` (process
    start to ready) as the total; imports and first token are not observable from outside."""
    phases = phases_from_log_file(log)
    return phases.model_copy(update={"total_s": _round(ready_s)})


def own_log() -> Path | None:
    """The file this process's stdout (vLLM logs there) or stderr goes to, if either is a
    regular file (hpcinfer's workers, benchmark engines and servers log to one)."""
    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return Path(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else None
        except OSError:
            continue
    return None


class StartupClock:
    """Times one engine's start-up in the process that starts it.

        clock = StartupClock()          # vLLM's log: this process's stdout, when a file
        with clock.imports():
            import vllm
        with clock.engine():
            llm = vllm.LLM(...)
        ...                             # the first request after ready:
        clock.first_token(seconds)      # submitted to its first token
        phases = clock.phases()         # a StartupPhases (call it at any point)

    Each step is optional; what was not timed stays None."""

    def __init__(self, log: Path | None = None) -> None:
        self._log = log if log is not None else own_log()
        self._imports: float | None = None
        self._engine: float | None = None
        self._ready_at: float | None = None
        self._first_token: float | None = None
        self._reported = StartupPhases()

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        began = time.monotonic()
        yield
        self._imports = time.monotonic() - began

    @contextlib.contextmanager
    def engine(self) -> Iterator[None]:
        """Times the engine's construction and reads what vLLM logged meanwhile."""
        began = time.monotonic()
        offset = _size(self._log)
        yield
        self._ready_at = time.monotonic()
        self._engine = self._ready_at - began
        if self._log is not None and offset is not None:
            self._reported = phases_from_log_file(self._log, offset)

    def first_token(self, seconds: float) -> None:
        """The first request after ready took `seconds` from submission to its first token
        (only the first call counts)."""
        if self._first_token is None:
            self._first_token = seconds

    @property
    def engine_s(self) -> float | None:
        """The engine's construction (model load, KV cache, compilation and the rest)."""
        return _round(self._engine)

    def phases(self) -> StartupPhases:
        total: float | None = None
        if self._engine is not None:
            total = (self._imports or 0.0) + self._engine + (self._first_token or 0.0)
        return self._reported.model_copy(
            update={
                "imports_s": _round(self._imports),
                "first_token_s": _round(self._first_token),
                "total_s": _round(total),
            }
        )


def _size(log: Path | None) -> int | None:
    if log is None:
        return None
    try:
        return log.stat().st_size
    except OSError:
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
