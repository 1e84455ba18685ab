"""`--retry-errors`: rerun only the error rows of an output directory, keep its ok rows.

A unit is the grain of commit, so a retried record cannot be appended beside its error row:
the unit holding it is sent again carrying only its failed records plus the rows it keeps,
and the worker commits the merged unit (kept ok rows and new rows, in record order) under
the same unit id. The commit is one atomic rename, so after a kill -9 at any moment a unit is
either the old one (its error rows still there: the next `--retry-errors` retries them) or
the merged one; no record is ever in two rows, and results.jsonl, rebuilt from the units in
plan order, holds every record once, in input order.

Records are read again from the inputs with the spec given now, so a fixed template or new
sampling applies to the retried records; the kept ok rows stay as the earlier spec made them
(the manifest lists the earlier specs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hpcinfer.errors import ResumeConflictError
from hpcinfer.outputs.store import OutputStore
from hpcinfer.run.plan import UnitSummary, WorkUnit

Row = dict[str, Any]


@dataclass(frozen=True)
class RetryPlan:
    """The committed units with error rows, and how many records that makes."""

    failed: dict[str, int]  # unit id -> error rows in it
    kept_ok: int  # ok rows of the committed units, kept as they are

    @property
    def records(self) -> int:
        return sum(self.failed.values())

    def describe(self, total: int, never_run: int) -> str:
        """What the user sees before the retry starts."""
        text = f"retrying {self.records} failed records of {total}; {self.kept_ok} ok kept"
        if never_run:
            text += f"; {never_run} never run, run now"
        return text


def plan_retry(store: OutputStore, committed: Iterable[UnitSummary]) -> RetryPlan:
    """Count the error rows of every committed unit (one pass over the unit files)."""
    failed: dict[str, int] = {}
    ok = 0
    for summary in committed:
        errors = sum(1 for row in _statuses(store, summary.id) if row != "ok")
        ok += summary.size - errors
        if errors:
            failed[summary.id] = errors
    return RetryPlan(failed, ok)


def _statuses(store: OutputStore, unit_id: str) -> list[str]:
    return [str(row.get("status")) for row in store.read_unit(unit_id)]


def retry_unit(unit: WorkUnit, rows: list[Row], where: str) -> WorkUnit:
    """`unit` narrowed to the records whose committed rows are errors, carrying the others'
    rows to keep. The rows must be the unit's records, position by position (same inputs,
    same unit size): anything else would put a result beside the wrong record."""
    ids = [row.get("id") for row in rows]
    if ids != [record.id for record in unit.records]:
        raise ResumeConflictError(
            f"{where}: the committed rows of unit {unit.id} are not its records now (the "
            "inputs, the id field or the unit size changed); --retry-errors needs the same "
            "records: rerun with --restart to start afresh"
        )
    kept = tuple(row if row.get("status") == "ok" else None for row in rows)
    todo = tuple(record for record, row in zip(unit.records, kept, strict=True) if row is None)
    return dataclasses.replace(unit, records=todo, kept=kept)


def merge_rows(kept: tuple[Row | None, ...], new_rows: list[Row]) -> list[Row]:
    """The whole unit in record order: each kept row in its place, new rows in the gaps."""
    gaps = sum(1 for row in kept if row is None)
    if gaps != len(new_rows):
        raise ValueError(f"{len(new_rows)} new rows for {gaps} gaps in a retried unit")
    fresh = iter(new_rows)
    return [row if row is not None else next(fresh) for row in kept]
