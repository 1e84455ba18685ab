"""Per-record options read from a record's own fields (e.g. its own output budget)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from hpcinfer.records import Record


def apply_max_tokens_field(records: Iterable[Record], field: str | None) -> Iterator[Record]:
    """Move `field` out of each record's fields into Record.max_tokens; a value that is not a
    positive integer makes that record an error row. Records without the field keep the
    job's max_tokens."""
    for record in records:
        if field is None or record.error is not None or field not in record.fields:
            yield record
            continue
        fields = dict(record.fields)
        raw = fields.pop(field)
        value = _positive_int(raw)
        if value is None:
            yield replace(
                record,
                prompt=None,
                messages=None,
                error=f"{record.where}: {field}={raw!r} is not a positive integer; fix the value "
                f"or remove it to use the job's max_tokens",
            )
        else:
            yield replace(record, fields=fields, max_tokens=value)


def _positive_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
        return value if value > 0 else None
    return None
