"""`hpcinfer status OUT_DIR`: the job running in a directory (its status file), the job that
finished there (run.json, results), one that was killed (neither); a job id still goes to
the scheduler."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpcinfer.outputs.store import OutputStore, unit_file_name
from hpcinfer.run.coordinator import WorkerState
from hpcinfer.run.status_file import StatusFile
from tests.harness import InProcessCLI


def _job_dir(root: Path, rows: list[dict[str, Any]]) -> Path:
    """An output directory with a plan of two units of 2 records, the first committed."""
    store = OutputStore(root)
    store.prepare("f", {"model": "m"}, restart=False)
    store.record_plan([("u1", 2), ("u2", 2)])
    store.commit("u1", rows)
    assert store.is_committed("u1") and (store.units_dir / unit_file_name("u1")).exists()
    return root


ROWS = [
    {"id": "p.txt:1", "status": "ok", "error": None},
    {"id": "p.txt:2", "status": "error", "error": "prompt too long (5000 > 4096 tokens)"},
]


def test_a_finished_job_shows_its_summary_and_last_errors(
    tmp_path: Path, main_cli: InProcessCLI
) -> None:
    out = _job_dir(tmp_path / "runs" / "big", ROWS)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    summary = {
        "status": "incomplete", "records_total": 4, "records_ok": 1, "records_failed": 1,
        "records_this_run": 2, "wall_s": 59.0, "generation_s": 2.0,
        "output_tokens_per_s": 50.0, "message": "stopped early (signal SIGINT)",
        "workers": [{"worker": 0, "host": "n1", "records": 2, "errors": 1, "error": None}],
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps({"summary": summary}))
    ran = main_cli("status", str(out))
    assert ran.code == 0, ran.output
    assert f"job in {out}: incomplete" in ran.out
    assert "records: 2 of 4 done (1 failed), 2 left" in ran.out
    assert "50 output tok/s over 2.0 s of generation; wall time 59.0 s" in ran.out
    assert "p.txt:2: prompt too long" in ran.out
    assert "generation time: first worker ready to last unit committed" in ran.out
    document = json.loads(main_cli("status", str(out), "--json").out)
    assert document["state"] == "incomplete" and document["records_left"] == 2
    assert main_cli("status", str(out), "--quiet").out == "incomplete\n"


def test_a_running_job_shows_its_status_file(tmp_path: Path, main_cli: InProcessCLI) -> None:
    out = _job_dir(tmp_path / "out", ROWS)
    status = StatusFile(out)  # written by this process: its pid is alive
    workers = [
        WorkerState(0, 0, "n1", "generating", 2, 1, 90, 0.5, "prompt too long"),
        WorkerState(1, 0, "n1", "silent", 0, 0, 0, 95.0, None),
    ]
    status.write(
        workers=workers, phase="generating", records_total=4, records_done=2,
        records_failed_this_run=1, records_this_run=2, output_tokens_this_run=90,
        generation_s=3.0, output_tokens_per_s=30.0, records_per_s=0.67, eta_s=None,
    )  # fmt: skip
    ran = main_cli("status", str(out))
    assert ran.code == 0, ran.output
    assert f"job in {out}: running (generating)" in ran.out
    assert "records: 2 of 4 done (1 failed this run), 2 left" in ran.out
    assert "30 output tok/s, 0.7 records/s over 3.0 s of generation" in ran.out
    assert "worker 1 on n1: silent 1m35s" in ran.out
    assert f"pid {os.getpid()} on {socket.gethostname()}" in ran.out
    document = json.loads(main_cli("status", str(out), "--json").out)
    assert document["state"] == "running" and document["last_errors"] == ["prompt too long"]


def test_a_killed_job_is_not_shown_running(tmp_path: Path, main_cli: InProcessCLI) -> None:
    out = _job_dir(tmp_path / "out", ROWS)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    StatusFile(out).write(workers=[], phase="generating", records_total=4, records_done=2)
    data = json.loads((out / "status.json").read_text())
    data["pid"] = gone.pid
    (out / "status.json").write_text(json.dumps(data))
    document = json.loads(main_cli("status", str(out), "--json").out)
    assert document["state"] == "stopped"
    assert (document["records_done"], document["records_failed"]) == (2, 1)
    assert document["records_left"] == 2 and "rerun the same command" in document["message"]
    # on another host, a status file not rewritten for a minute is a gone run too
    data.update(host="elsewhere", updated_at=time.time() - 3600)
    (out / "status.json").write_text(json.dumps(data))
    assert json.loads(main_cli("status", str(out), "--json").out)["state"] == "stopped"


def test_a_directory_without_a_job_is_a_clear_error(tmp_path: Path, main_cli: InProcessCLI) -> None:
    ran = main_cli("status", str(tmp_path))
    assert ran.code == 2 and "holds no hpcinfer job (no manifest.json)" in ran.err


def test_a_job_id_still_asks_the_scheduler(tmp_path: Path, main_cli: InProcessCLI) -> None:
    ran = main_cli("status", "12345", "--scheduler", "slurm")
    assert "is not a directory" not in ran.output and "manifest" not in ran.output
