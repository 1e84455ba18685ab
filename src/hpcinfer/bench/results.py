"""Where and how every benchmark writes its results, so `hpcinfer report` can read any of them.

A benchmark run writes into its `--out DIR`:

- `DIR/<kind>.json` (kind: `offline`, `serve`, `fom`), written atomically, one document:
  `{"kind", "hpcinfer_version", "created" (ISO 8601 UTC), "command" (the command line the
  caller passed: the CLI passes its argv, secrets never included; a library call none),
  "config" {...}, ...}` plus the kind's own body:
    - serve: `"runs": [{"label", "load": {"mode": "all-at-once"|"concurrency"|"rate",
      "rate": float|None (None = all at once), "burstiness", "max_concurrency": int|None,
      "requests": int, "description": str}, "metrics": <bench.metrics.summarize() dict>,
      "server_metrics": {"before": {...}, "after": {...}, "delta": {...}} | None,
      "errors": {"<message>": count}}]`, one entry per point of a sweep, in sweep order;
      a sweep to saturation (`--sweep N`) adds `"role"` to each load and `"sweep":
      {"profile", "arrivals", "synchronous_rate", "throughput_rate", "rates", "knee":
      bench.sweep.find_knee()}`;
    - offline: `"result": {"latency_s": {"mean", "median", "std", "p50", ...}, "throughput",
      "prefill_tokens_per_s", "decode_tokens_per_s", "input_tokens", "output_tokens",
      "flops_per_s", "mfu", "iterations_s": [...]}`;
    - fom: `"cases": [{"name", "input_len", "output_len", "batch_size", "max_model_len",
      "latency_s", "input_tokens", "output_tokens", "throughput", "flops_per_s", "mfu"}],
      "fom": {"throughput", "flops_per_s"}`;
- `DIR/<kind>.csv`: the same figures as a table (offline: the ALCF inference FOM's row, appended).

A rerun into the same DIR replaces `<kind>.json` (and appends to the FOM's CSV, as its
`infr_bench.py` did).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpcinfer.outputs.atomic import write_text_atomic

RESULT_KINDS = ("offline", "serve", "fom")


def result_document(
    kind: str,
    config: Mapping[str, Any],
    body: Mapping[str, Any],
    command: Sequence[str] = (),
) -> dict[str, Any]:
    """The common envelope of a result file around a benchmark's own `body`; `command` is
    the command line to record (the CLI's argv), empty from a library call."""
    from hpcinfer import __version__

    if kind not in RESULT_KINDS:
        raise ValueError(f"unknown result kind {kind!r}: one of {', '.join(RESULT_KINDS)}")
    return {
        "kind": kind,
        "hpcinfer_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(command),
        "config": dict(config),
        **body,
    }


def write_result(out_dir: Path, document: Mapping[str, Any]) -> Path:
    """Write `DIR/<kind>.json` atomically and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{document['kind']}.json"
    write_text_atomic(path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path


def write_table(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows as a CSV table (header first), atomically; missing values are empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row[name] for name in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())
    return path


def load_results(directory: Path) -> list[dict[str, Any]]:
    """Every result document in `directory`, in RESULT_KINDS order; a file that is not one
    (bad JSON, no known kind) raises ValueError naming it."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory of benchmark results")
    found: list[dict[str, Any]] = []
    for kind in RESULT_KINDS:
        path = directory / f"{kind}.json"
        if not path.exists():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable result file ({exc})") from None
        if not isinstance(document, dict) or document.get("kind") != kind:
            raise ValueError(f"{path}: not a {kind} result (its 'kind' is missing or wrong)")
        found.append(document)
    return found
