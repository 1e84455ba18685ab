"""What `hpcinfer status OUT_DIR` shows: the job running in that directory (its status
file), or the job that ran there (run.json, the manifest and the committed units)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from hpcinfer.errors import SpecError
from hpcinfer.outputs.store import OutputStore
from hpcinfer.run.status_file import LAST_ERRORS, read_status_file

STALE_S = 60.0
"""A status file on another host not rewritten for this long: its run is taken as gone."""


def job_status(out_dir: Path) -> dict[str, Any]:
    """The job in `out_dir`: `state` is running, stopped (it ended without finishing and
    without a summary: killed), or the finished run's status (ok, finished_with_errors,
    incomplete)."""
    if not (out_dir / "manifest.json").exists():
        raise SpecError(
            f"{out_dir} holds no hpcinfer job (no manifest.json); name the --out directory "
            "of `hpcinfer run`, or a job id from `hpcinfer submit`"
        )
    running = read_status_file(out_dir)
    if running is not None:
        gone = _gone(running)
        if gone is None:
            return {"out_dir": str(out_dir), **running}
        return _from_units(out_dir, "stopped", gone)
    summary = _summary(out_dir)
    if summary is None:
        return _from_units(out_dir, "stopped", "no run is going on and none finished here")
    return _from_summary(out_dir, summary)


def _gone(status: dict[str, Any]) -> str | None:
    """Why the run that wrote `status` is no longer running; None while it runs."""
    pid, host = status.get("pid"), status.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its process (pid {pid} on {host}) is gone: it was killed or crashed"
        except PermissionError:
            return None
        return None
    age = time.time() - float(status.get("updated_at", 0))
    if age > STALE_S:
        return f"its status (pid {pid} on {host}) was last updated {age:.0f} s ago"
    return None


def _summary(out_dir: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((out_dir / "run.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    summary = document.get("summary") if isinstance(document, dict) else None
    return summary if isinstance(summary, dict) else None


def _from_summary(out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    total, ok, failed = summary["records_total"], summary["records_ok"], summary["records_failed"]
    return {
        "out_dir": str(out_dir),
        "state": summary["status"],
        "phase": "finished",
        "records_total": total,
        "records_done": ok + failed,
        "records_failed": failed,
        "records_left": total - ok - failed,
        "records_this_run": summary.get("records_this_run"),
        "wall_s": summary.get("wall_s"),
        "generation_s": summary.get("generation_s"),
        "output_tokens_per_s": summary.get("output_tokens_per_s"),
        "workers": [
            {
                "worker": w.get("worker"),
                "host": w.get("host", ""),
                "state": "failed" if w.get("error") else "done",
                "records": w.get("records", 0),
                "errors": w.get("errors", 0),
                "error": w.get("error"),
            }
            for w in summary.get("workers", [])
        ],
        "last_errors": _last_error_rows(out_dir / "results.jsonl"),
        "message": summary.get("message", ""),
    }


def _from_units(out_dir: Path, state: str, why: str) -> dict[str, Any]:
    """A job with no running process and no summary of its latest run: count what the
    committed units hold against the recorded plan."""
    store = OutputStore(out_dir)
    plan = (store.read_manifest() or {}).get("units") or []
    committed = store.committed()
    total = sum(int(u.get("records", 0)) for u in plan if isinstance(u, dict))
    done = failed = 0
    errors: deque[str] = deque(maxlen=LAST_ERRORS)
    for name in sorted(committed):
        for row in _rows(store.units_dir / name):
            done += 1
            if row.get("status") != "ok":
                failed += 1
                errors.append(str(row.get("error") or "error"))
    return {
        "out_dir": str(out_dir),
        "state": state,
        "phase": "not running",
        "records_total": total,
        "records_done": done,
        "records_failed": failed,
        "records_left": max(total - done, 0),
        "workers": [],
        "last_errors": list(errors),
        "message": f"{why}; rerun the same command to resume",
    }


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def _last_error_rows(results: Path) -> list[str]:
    """The last error rows' messages, reading the file once (parsing error rows only)."""
    errors: deque[str] = deque(maxlen=LAST_ERRORS)
    try:
        with results.open(encoding="utf-8") as handle:
            for line in handle:
                if '"status": "ok"' in line:
                    continue
                row = json.loads(line)
                if row.get("status") != "ok":
                    errors.append(f"{row.get('id')}: {row.get('error') or 'error'}")
    except (OSError, json.JSONDecodeError):
        pass
    return list(errors)
