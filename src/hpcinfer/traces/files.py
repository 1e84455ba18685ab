"""Which files in a folder are Kineto traces, and where the results go."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcinfer.errors import InputError
from hpcinfer.traces.byte_streams import open_trace

ANALYSIS_JSON = "analysis.json"
RANKS_CSV = "analysis_ranks.csv"
STEPS_CSV = "analysis_steps.csv"
COLLECTIVES_CSV = "analysis_collectives.csv"
# Files a run folder holds beside its traces (written by `hpcinfer profile run`).
_NOT_TRACES = ("analysis", "profile", "config", "torch_et_", "timing_stats_", "operators_")
_PEEK_BYTES = 1 << 20


def trace_files(where: Path) -> tuple[list[Path], list[str]]:
    """The Kineto traces in folder `where` (or `where` itself), and notes on files passed
    over. InputError when there are none."""
    if not where.exists():
        raise InputError(f"{where}: no such file or folder; pass the folder holding the traces")
    candidates = (
        [where]
        if where.is_file()
        else sorted(
            p for p in where.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz"))
        )
    )
    notes: list[str] = []
    found = []
    for path in candidates:
        if where.is_dir() and path.name.startswith(_NOT_TRACES):
            continue
        if _has_trace_events(path):
            found.append(path)
        else:
            notes.append(f"{path.name}: no `traceEvents` in its first MiB, not read as a trace")
    if not found:
        raise InputError(
            f"{where}: no Kineto trace (*.json or *.json.gz with `traceEvents`) found; pass "
            "the folder the profiler wrote (e.g. a `hpcinfer profile run` output folder, or "
            "vLLM's torch_profiler_dir)"
        )
    return found, notes


def _has_trace_events(path: Path) -> bool:
    """Whether the first MiB names `traceEvents` (a cut or damaged gzip gives what it has)."""
    seen = b""
    try:
        with open_trace(path) as stream:
            while len(seen) < _PEEK_BYTES:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                seen += chunk
    except (OSError, zlib.error):
        pass
    return b'"traceEvents"' in seen


def write_json(path: Path, document: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    _atomic(path, json.dumps(document, indent=1) + "\n")


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    os.replace(temporary, path)


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    return value


def _atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)
