"""status.json: what a running job is doing, rewritten atomically every few seconds by its
coordinator (its progress view) and removed when the job ends, so `hpcinfer status OUT_DIR`
can show a job running anywhere the output directory is visible."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcinfer.outputs.atomic import write_text_atomic

if TYPE_CHECKING:
    from hpcinfer.run.coordinator import WorkerState

STATUS_FILE = "status.json"
LAST_ERRORS = 5


class StatusFile:
    """The running job's status file in its output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / STATUS_FILE
        self.started_at = time.time()

    def write(self, *, workers: list[WorkerState], **figures: Any) -> None:
        errors = [w.error for w in workers if w.error]
        document = {
            "state": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": round(self.started_at, 3),
            "updated_at": round(time.time(), 3),
            **figures,
            "records_left": figures.get("records_total", 0) - figures.get("records_done", 0),
            "workers": [dataclasses.asdict(w) for w in workers],
            "last_errors": errors[-LAST_ERRORS:],
        }
        # A full or read-only disk must not stop the run: the status just lags.
        with contextlib.suppress(OSError):
            write_text_atomic(self.path, json.dumps(document, indent=1) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_status_file(out_dir: Path) -> dict[str, Any] | None:
    """The status file's content; None when there is none (or it cannot be read)."""
    try:
        data = json.loads((out_dir / STATUS_FILE).read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
