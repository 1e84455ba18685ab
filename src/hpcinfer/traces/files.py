"""Which files in a folder are Kineto traces, and where the results go."""

from __future__ import annotations

import csv
import json
import os
import re
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
# Files a run folder holds beside its traces (written by `hpcinfer profile run` and
# `profile analyze`), by their exact names: a trace called `profile_tp2.json` is still read.
_OWN_OUTPUTS = re.compile(
    r"^(?:profile\.json|config\.ya?ml|analysis\w*\.(?:json|csv)|timing_stats_\w*\.json"
    r"|operators_\w*\.csv|torch_et_\w*\.json)$"
)
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
        if where.is_dir() and _OWN_OUTPUTS.match(path.name):
            continue
        problem = _not_a_trace(path)
        if problem is None:
            found.append(path)
        else:
            notes.append(f"{path.name}: {problem}")
    if not found:
        raise InputError(
            f"{where}: no Kineto trace (*.json or *.json.gz with `traceEvents`) found; pass "
            "the folder the profiler wrote (e.g. a `hpcinfer profile run` output folder, or "
            "vLLM's torch_profiler_dir)"
        )
    return found, notes


def _not_a_trace(path: Path) -> str | None:
    """Why `path` is not read as a trace, or None when its first MiB names `traceEvents`
    (a cut or damaged gzip gives what it has; a file that cannot be read says why)."""
    seen = b""
    try:
        with open_trace(path) as stream:
            while len(seen) < _PEEK_BYTES:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                seen += chunk
    except zlib.error:
        pass
    except OSError as exc:
        if not seen:
            return f"cannot be read ({exc.strerror or exc}), not analysed"
    if b'"traceEvents"' in seen:
        return None
    return "no `traceEvents` in its first MiB, not read as a trace"


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
