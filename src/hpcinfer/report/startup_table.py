"""The engines' start-up, phase by phase, as a report table and one sentence.

Cold start can outweigh a short benchmark; which phase dominates (imports, model load, KV
cache, compilation, the first token) says what to fix. A phase the engine did not report
shows as n/a, never as an estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpcinfer.report.page import Table
from hpcinfer.report.values import fmt, get_num

PHASES = (
    ("imports_s", "imports"),
    ("model_load_s", "model load"),
    ("kv_cache_s", "KV cache"),
    ("compile_s", "compilation"),
    ("first_token_s", "first token"),
)


def startup_table(title: str, engines: Sequence[tuple[str, Any]]) -> Table | None:
    """One row per (engine label, its recorded start-up phases); None when none has any."""
    known = [(label, phases) for label, phases in engines if isinstance(phases, Mapping)]
    if not known:
        return None
    rows = tuple(
        (label, *(fmt(get_num(phases, key)) for key, _ in PHASES), fmt(get_num(phases, "total_s")))
        for label, phases in known
    )
    return Table(
        title=title,
        columns=("engine", *(name for _, name in PHASES), "total"),
        rows=rows,
        note="Imports, first token and total are measured by hpcinfer (total: imports + the "
        "engine's construction + first token); model load, KV cache (memory profiling, cache "
        "creation and warm-up) and compilation (torch.compile and graph capture) are vLLM's own "
        "figures from its log. n/a: not reported.",
    )


def read_startup(phases: Any) -> str | None:
    """'The engine started in 12.1 s, most of it imports (2.9 s).' or None."""
    if not isinstance(phases, Mapping):
        return None
    total = get_num(phases, "total_s")
    parts = [(get_num(phases, key), name) for key, name in PHASES]
    known = [(value, name) for value, name in parts if value is not None]
    if total is None or not known:
        return None
    value, name = max(known)
    return f"The engine started in {fmt(total)} s; its longest phase was {name} ({fmt(value)} s)."
