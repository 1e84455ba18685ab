"""Engine steps: the windows every per-step figure is measured over.

A trace taken with a profiler schedule marks steps `ProfilerStep#N`; vLLM's workers mark
each engine step `execute_context_N(T)_generation_M(T)` (or the detailed form
`execute_<tokens>_context_N(sqT sk...)_generation_M(sqT sk...)`), which also says whether
it was prefill, decode or both. The first and last steps are dropped: the profiler starts
and stops inside them, so they are partial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROFILER_STEP = "ProfilerStep#"
_VLLM_STEP = re.compile(
    r"^execute_(?:\d+_)?context_(\d+)\((?:sq)?(\d+)[^)]*\)_generation_(\d+)\((?:sq)?(\d+)[^)]*\)"
)
KINDS = ("prefill", "decode", "mixed", "unknown")


@dataclass(frozen=True)
class Step:
    """One step window in the trace's own clock (microseconds)."""

    start: float
    end: float
    name: str
    kind: str  # prefill, decode, mixed or unknown


def is_step_name(name: str) -> bool:
    return name.startswith(PROFILER_STEP) or name.startswith("execute_")


def vllm_step_kind(name: str) -> str | None:
    """prefill / decode / mixed for a vLLM step annotation; None for any other name."""
    found = _VLLM_STEP.match(name)
    if found is None:
        return None
    context, generation = int(found.group(1)), int(found.group(3))
    if context and generation:
        return "mixed"
    return "prefill" if context else "decode" if generation else "unknown"


def choose_steps(marks: list[Step]) -> tuple[list[Step], str | None]:
    """The step windows of one timeline: ProfilerStep#N when present (each takes the kind of
    the vLLM step inside it), else the vLLM annotations; and a note when the first and last
    could not be dropped."""
    profiler = sorted((s for s in marks if s.name.startswith(PROFILER_STEP)), key=_start)
    vllm = sorted((s for s in marks if s.name.startswith("execute_")), key=_start)
    chosen = [_with_kind(s, vllm) for s in profiler] if profiler else vllm
    if len(chosen) >= 3:
        return chosen[1:-1], None
    if not chosen:
        return [], "no step marks (ProfilerStep#N or vLLM execute_...): one window, the trace"
    return chosen, (
        f"only {len(chosen)} step(s): kept them all instead of dropping the first and last"
    )


def _with_kind(window: Step, vllm: list[Step]) -> Step:
    kinds = {s.kind for s in vllm if window.start <= s.start < window.end} - {"unknown"}
    kind = kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "unknown"
    return Step(window.start, window.end, window.name, kind)


def _start(step: Step) -> float:
    return step.start
