"""Check a prompt template against the inputs before any engine starts.

A misspelt template variable would otherwise make every record an error row, after minutes
of model loading. The first record of each input (a CSV/TSV header, the first JSONL object,
a Parquet/dataset schema, `text` for text files) names the fields that exist; a template
variable none of them has is an InputError (exit 2) naming the variable, the file, the
fields there and the closest name.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from jinja2.defaults import DEFAULT_NAMESPACE

from hpcinfer.errors import InputError
from hpcinfer.inputs.batch import is_batch_line
from hpcinfer.inputs.columnar import COLUMNAR, column_names
from hpcinfer.inputs.paths import display_name
from hpcinfer.inputs.readers import detect_format
from hpcinfer.inputs.template import PromptTemplate, describe_names

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_PEEK_LINES = 1000
"""Leading blank or unreadable lines skipped looking for the first record."""


def check_template(
    template: PromptTemplate | None,
    files: Sequence[Path],
    *,
    cwd: Path | None = None,
    fmt: str | None = None,
) -> None:
    """Raise InputError when the template uses a variable an input's records do not have."""
    if template is None:
        return
    wanted = sorted(
        name
        for name in template.variables
        if name not in DEFAULT_NAMESPACE and not _tested(name, template.source)
    )
    for path in files:
        source = display_name(path, cwd)
        fields = first_fields(path, detect_format(path, fmt), source)
        if fields is None:
            continue
        for name in wanted:
            if name not in fields:
                raise InputError(_message(name, source, fields))


def first_fields(path: Path, kind: str, source: str) -> list[str] | None:
    """The field names of the input's first record; None when there is none to check
    (an empty file, a first line that is not a JSON object, an OpenAI Batch file)."""
    if kind == "text":
        return ["text"]
    if kind in COLUMNAR:
        return column_names(path, kind, source)
    if kind == "batch" or not path.is_file():
        return None
    with path.open("rb") as handle:
        lines = (raw.decode("utf-8", errors="replace") for raw in islice(handle, _PEEK_LINES))
        lines = (line.removeprefix("\ufeff") for line in lines)
        if kind in _DELIMITERS:
            header = next(
                (row for row in csv.reader(lines, delimiter=_DELIMITERS[kind]) if any(row)), None
            )
            return None if header is None else [cell.strip() for cell in header]
        for line in lines:
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    return None
                if not isinstance(obj, dict) or is_batch_line(obj):
                    return None
                return list(obj)
    return None


def _tested(name: str, source: str) -> bool:
    """A variable the template tests with `is defined` may be missing from some records."""
    return re.search(rf"\b{re.escape(name)}\s+is\s+(not\s+)?(un)?defined\b", source) is not None


def _message(name: str, source: str, fields: list[str]) -> str:
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"the prompt template uses {name!r}, which the records of {source} do not have "
        f"(fields: {describe_names(fields)}); {hint}fix the template (--template) or the input"
    )
