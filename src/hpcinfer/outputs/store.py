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

import contextlib
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
EARLIER_SPECS = "earlier_specs"
"""Manifest key: identities of the specs that made kept rows before a --retry-errors."""
RECORD_KEYS = ("input_files", "unit_size")
RECORD_INPUT_KEYS = ("paths", "format", "id_field")
"""Identity fields that decide which records there are and how they are cut into units."""
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

    def unlock(self) -> None:
        """Let the next run have the directory (a library caller may run again in this
        process; the lock would otherwise last as long as this object, e.g. in a kept
        traceback)."""
        if self._lock_handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def prepare(
        self,
        fingerprint: str,
        identity: dict[str, Any],
        *,
        restart: bool,
        retry_errors: bool = False,
    ) -> bool:
        """Claim the directory for a spec; return True when this resumes an earlier run.

        A directory holding another spec's results is refused (mixing them would corrupt the
        results) unless `restart`, which deletes the earlier results first. A directory with no
        committed unit holds no results, so it takes any spec: a run that failed before its
        first commit (a bad model path, a typo) must not lock the directory for the fixed rerun.
        `retry_errors` (rerun the error rows, keep the ok rows) takes another spec as long as
        the records and their units are the same (a fixed template, new sampling); the earlier
        spec is listed in the manifest's `earlier_specs`, since the kept rows were made by it.
        """
        if restart or self._holds_no_results_for(fingerprint):
            self.clear()
        manifest = self.read_manifest()
        earlier: list[Any] = list((manifest or {}).get(EARLIER_SPECS) or [])
        changed = manifest is not None and manifest.get("fingerprint") != fingerprint
        if changed and not restart:
            old = (manifest or {}).get("identity", {})
            if not retry_errors:
                raise ResumeConflictError(
                    f"{self.root} holds results of a different spec "
                    f"({_describe_change(old, identity)}); rerun with --restart to discard "
                    "them, --retry-errors to rerun only its error rows with this spec, or "
                    "choose another --out"
                )
            _check_same_records(self.root, old, identity)
            earlier.append(old)
        self.root.mkdir(parents=True, exist_ok=True)
        self.units_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.remove_cut_commits()
        self._claim = {"fingerprint": fingerprint, "identity": identity}
        if earlier:
            self._claim[EARLIER_SPECS] = earlier
        if manifest is None:  # a resume keeps the plan it recorded (same fingerprint)
            self.write_manifest(self._claim | {"units": None})
        elif changed:  # --retry-errors with a new spec: the same plan, the new spec's claim
            self.write_manifest(self._claim | {"units": manifest.get("units")})
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


def _check_same_records(root: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """--retry-errors keeps rows by unit and position: refuse when the records may differ."""
    moved = [k for k in RECORD_KEYS if old.get(k) != new.get(k)]
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    moved += [f"inputs.{k}" for k in RECORD_INPUT_KEYS if old_in.get(k) != new_in.get(k)]
    if moved:
        raise ResumeConflictError(
            f"{root}: --retry-errors reruns error rows of the same records, but "
            f"{', '.join(moved)} changed ({_describe_change(old, new)}); rerun with --restart "
            "to start afresh, or choose another --out"
        )


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
