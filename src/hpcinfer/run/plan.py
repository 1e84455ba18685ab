"""Cut records into work units with deterministic ids, so a rerun finds the same units.

Units hold consecutive records of one input file; their ids ("<source>:<first>-<last>")
depend only on the inputs and the unit size, never on the number of workers, so a job may be
resumed with a different worker count. Records are streamed: a job of millions of prompts
is planned holding only one unit and the set of ids at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcinfer.inputs.columnar import input_files
from hpcinfer.records import Record


@dataclass(frozen=True, slots=True)
class WorkUnit:
    id: str
    index: int
    records: tuple[Record, ...]
    kept: tuple[dict[str, Any] | None, ...] = ()
    """A retried unit (`--retry-errors`): its committed rows, None where a record of
    `records` runs again; the worker commits them merged (`run.retry.merge_rows`)."""

    @property
    def size(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True)
class UnitSummary:
    """A unit without its prompts: what the manifest and the progress total need."""

    id: str
    index: int
    size: int
    read_errors: int


def mark_duplicates(records: Iterable[Record]) -> Iterator[Record]:
    """Turn the second and later records with an id already seen into error records that name
    both places; the first keeps its id and runs, nothing is dropped."""
    first_seen: dict[str, str] = {}
    for record in records:
        earlier = first_seen.get(record.id)
        if earlier is None:
            first_seen[record.id] = record.where
            yield record
        else:
            yield replace(
                record,
                prompt=None,
                messages=None,
                error=(
                    f"{record.where}: duplicate id {record.id!r}, first used at {earlier}; "
                    "give every record a unique id (or drop the id field to use file:line ids)"
                ),
            )


def cut_units(records: Iterable[Record], unit_size: int) -> Iterator[WorkUnit]:
    """Group consecutive records of the same source into units of at most `unit_size`."""
    batch: list[Record] = []
    index = 0
    for record in records:
        if batch and (len(batch) >= unit_size or record.source != batch[0].source):
            yield _unit(batch, index)
            index += 1
            batch = []
        batch.append(record)
    if batch:
        yield _unit(batch, index)


def _unit(batch: Sequence[Record], index: int) -> WorkUnit:
    first, last = batch[0], batch[-1]
    return WorkUnit(
        id=f"{first.source}:{first.line}-{last.line}", index=index, records=tuple(batch)
    )


def summarize(unit: WorkUnit) -> UnitSummary:
    errors = sum(1 for r in unit.records if r.error is not None)
    return UnitSummary(unit.id, unit.index, unit.size, errors)


def file_digests(files: Sequence[Path], names: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each input file, so a resume notices inputs that changed under it."""
    digests: dict[str, str] = {}
    for path, name in zip(files, names, strict=True):
        digest = hashlib.sha256()
        for part in input_files(path):  # a saved dataset is a directory of files
            with part.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        digests[name] = digest.hexdigest()
    return digests
