"""The output store: one file per committed work unit, a manifest, and resume.

A unit is committed by an atomic rename, so after a kill -9 at any moment a unit's file is
either complete or absent. Rerunning skips committed units; every record appears exactly once.
Layout of an output directory:

    manifest.json        spec fingerprint + identity, the unit plan (ids, files, counts)
    units/<hash>.jsonl   one row per record of a committed unit
    results.jsonl        export: every row in input order (rewritten at the end of each run)
    run.json             what ran: spec, versions, host, placement, timings, figures
    logs/                one log per worker
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from hpcinfer.errors import ResumeConflictError
from hpcinfer.outputs.atomic import atomic_writer, write_text_atomic

MANIFEST = "manifest.json"
UNITS_DIR = "units"
LOGS_DIR = "logs"
LOCK_FILE = ".lock"
_EXPORT_FILES = ("results.jsonl", "results.parquet", "run.json")
_EXPORT_DIRS = ("text",)


def unit_file_name(unit_id: str) -> str:
    """File name of a unit: a digest of its id (ids hold paths and colons)."""
    return hashlib.sha256(unit_id.encode()).hexdigest()[:24] + ".jsonl"


class OutputStore:
    """One run's output directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_handle: IO[str] | None = None
        self._claim: dict[str, Any] = {}
        self.units_dir = root / UNITS_DIR
        self.logs_dir = root / LOGS_DIR

    def lock(self) -> None:
        """Hold the directory for this run: a second run on it would interleave commits.

        An flock on `.lock`, released when this process exits (even by kill -9). On file
        systems without flock (some Lustre mounts) the run goes on unlocked."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = (self.root / LOCK_FILE).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ResumeConflictError(
                f"{self.root} is in use by another hpcinfer run ({holder}); wait for it to "
                "end, or choose another --out"
            ) from None
        except OSError:
            return  # no flock support here
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock_handle = handle

    def prepare(self, fingerprint: str, identity: dict[str, Any], *, restart: bool) -> bool:
        """Claim the directory for a spec; return True when this resumes an earlier run.

        A directory holding another spec's results is refused (mixing them would corrupt the
        results) unless `restart`, which deletes the earlier results first. A directory with no
        committed unit holds no results, so it takes any spec: a run that failed before its
        first commit (a bad model path, a typo) must not lock the directory for the fixed rerun.
        """
        if restart or self._holds_no_results_for(fingerprint):
            self.clear()
        manifest = self.read_manifest()
        if manifest is not None and manifest.get("fingerprint") != fingerprint and not restart:
            raise ResumeConflictError(
                f"{self.root} holds results of a different spec "
                f"({_describe_change(manifest.get('identity', {}), identity)}); "
                "rerun with --restart to discard them, or choose another --out"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.units_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.remove_cut_commits()
        self._claim = {"fingerprint": fingerprint, "identity": identity}
        if manifest is None:  # a resume keeps the plan it recorded (same fingerprint)
            self.write_manifest({"fingerprint": fingerprint, "identity": identity, "units": None})
        return manifest is not None

    def _holds_no_results_for(self, fingerprint: str) -> bool:
        """True when nothing committed here could be mixed up: no unit file, and a manifest
        that is absent, unreadable or another spec's (the same spec's plan is kept)."""
        if self.committed():
            return False
        try:
            manifest = self.read_manifest()
        except ResumeConflictError:
            return True
        return manifest is not None and manifest.get("fingerprint") != fingerprint

    def remove_cut_commits(self) -> None:
        """Delete temp files of commits cut short by a kill (at the start of a run, and at its
        end, once the workers are gone: a worker killed mid-commit leaves one)."""
        for stale in self.units_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.units_dir, ignore_errors=True)
        for name in (MANIFEST, *_EXPORT_FILES):
            (self.root / name).unlink(missing_ok=True)
        for name in _EXPORT_DIRS:
            shutil.rmtree(self.root / name, ignore_errors=True)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ResumeConflictError(
                f"{path} is unreadable ({exc}); rerun with --restart to start afresh"
            ) from exc
        if not isinstance(data, dict):
            raise ResumeConflictError(
                f"{path} does not hold a manifest; rerun with --restart to start afresh"
            )
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_text_atomic(self.root / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    def record_plan(self, units: Iterable[tuple[str, int]]) -> None:
        """Write the plan (unit ids and sizes) into the manifest of the spec claimed by
        prepare(); a resume reads it back through units_left()."""
        self.write_manifest(
            self._claim
            | {
                "units": [
                    {"id": uid, "file": unit_file_name(uid), "records": n} for uid, n in units
                ]
            }
        )

    def units_left(self) -> int | None:
        """Units of the recorded plan not committed yet; None when no plan is recorded."""
        units = (self.read_manifest() or {}).get("units")
        if not isinstance(units, list):
            return None
        committed = self.committed()
        return sum(1 for u in units if isinstance(u, dict) and u.get("file") not in committed)

    def committed(self) -> set[str]:
        """File names of committed units (temp files of interrupted commits are ignored)."""
        if not self.units_dir.exists():
            return set()
        return {p.name for p in self.units_dir.glob("*.jsonl")}

    def is_committed(self, unit_id: str) -> bool:
        return (self.units_dir / unit_file_name(unit_id)).exists()

    def commit(self, unit_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write a whole unit atomically; committing the same unit again replaces it whole."""
        with atomic_writer(self.units_dir / unit_file_name(unit_id)) as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def read_unit(self, unit_id: str) -> list[dict[str, Any]]:
        path = self.units_dir / unit_file_name(unit_id)
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def iter_rows(self, unit_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Rows of the given committed units, in the order given (input order for a plan)."""
        for unit_id in unit_ids:
            if self.is_committed(unit_id):
                yield from self.read_unit(unit_id)

    def log_path(self, worker: int) -> Path:
        return self.logs_dir / f"worker-{worker}.log"


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return "its fingerprint differs"
    parts = []
    for key in changed[:4]:
        parts.append(f"{key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    return "changed " + "; ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
