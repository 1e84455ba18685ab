"""Read input files (text, JSONL, OpenAI Batch, CSV, TSV, Parquet, saved Hugging Face
datasets) into Records, streaming, one record at a time.

Files are read as bytes and each line is decoded on its own, so a file of any size fits in
memory and one line of bad bytes costs one error row, not the run. Everything wrong with one
record becomes a Record with `error` set; only problems with a whole file raise InputError.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from hpcinfer.errors import InputError
from hpcinfer.inputs.batch import batch_record, is_batch_line
from hpcinfer.inputs.columnar import (
    COLUMNAR,
    check_columns,
    column_names,
    is_saved_dataset,
    read_rows,
)
from hpcinfer.inputs.paths import display_name
from hpcinfer.inputs.sampling import take_sampling
from hpcinfer.inputs.template import PromptTemplate, TemplateRenderError, describe_names
from hpcinfer.records import Message, Record

FORMATS = ("text", "jsonl", "batch", "csv", "tsv", "parquet", "hf-dataset")
_BY_EXTENSION = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
_BOM = b"\xef\xbb\xbf"
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # the default (128 KiB) is shorter than long-context prompts
_PROMPT_OPTION = "--prompt-column"
_TEMPLATE_OPTION = "--template"


class _BadRecord(Exception):
    """One record cannot be used; carries the message for its error row."""


@dataclass(frozen=True, slots=True)
class _Options:
    prompt_field: str | None
    template: PromptTemplate | None
    id_field: str
    sampling_fields: bool = True
    data_keys: frozenset[str] = frozenset()
    """Keys that are never sampling settings (the prompt, id and max-tokens fields)."""

    def take_sampling(self, record: Record) -> Record:
        if not self.sampling_fields:
            return record
        return take_sampling(record, skip=self.data_keys)


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The format to read `path` as: `fmt` when given, else from the file extension."""
    if fmt is not None:
        chosen = fmt.strip().lower()
        if chosen not in FORMATS:
            raise InputError(f"unknown input format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return chosen
    if path.is_dir() and is_saved_dataset(path):
        return "hf-dataset"
    return _BY_EXTENSION.get(path.suffix.lower(), "text")


def read_records(
    files: Sequence[Path],
    *,
    cwd: Path | None = None,
    fmt: str | None = None,
    prompt_field: str | None = None,
    template: PromptTemplate | None = None,
    id_field: str = "id",
    sampling_fields: bool = True,
    max_tokens_field: str | None = None,
) -> Iterator[Record]:
    """Every record of every file, in file order then line order.

    Whole-file problems (unknown format, missing file, a CSV/TSV header without the prompt
    column) raise InputError here, before the first record is yielded.
    """
    data_keys = frozenset(k for k in (prompt_field, id_field, max_tokens_field) if k)
    options = _Options(prompt_field, template, id_field, sampling_fields, data_keys)
    plan = [(path, detect_format(path, fmt), display_name(path, cwd)) for path in files]
    for path, kind, source in plan:
        if path.is_dir() and kind != "hf-dataset":
            raise InputError(f"input {source} is a directory; pass the files inside it")
        if not path.exists():
            raise InputError(f"input file {source} does not exist; check the path")
        if kind in COLUMNAR:
            check_columns(column_names(path, kind, source), source, options.prompt_field,
                          options.template is not None)  # fmt: skip
        if kind in _DELIMITERS:
            with _open(path, source) as handle:
                bad_lines: list[tuple[int, str]] = []
                lines = _decoded(_numbered(handle), bad_lines)
                reader = csv.reader(lines, delimiter=_DELIMITERS[kind])
                _table_header(reader, bad_lines, source, options)
    return _iter_records(plan, options)


def _iter_records(plan: list[tuple[Path, str, str]], options: _Options) -> Iterator[Record]:
    for path, kind, source in plan:
        if kind == "text":
            yield from _read_text(path, source, options)
        elif kind in ("jsonl", "batch"):
            yield from _read_jsonl(path, source, options, batch_only=kind == "batch")
        elif kind in COLUMNAR:
            for row_no, row in read_rows(path, kind, source):
                yield options.take_sampling(_object_record(row, source, row_no, options))
        else:
            yield from _read_table(path, source, _DELIMITERS[kind], options)


def _decoded_lines(path: Path, source: str) -> Iterator[tuple[int, str | Record]]:
    """(line number, text) per physical line; a line that is not UTF-8 comes as its error
    record instead, so one bad line never stops the file."""
    with _open(path, source) as handle:
        for line_no, raw in _numbered(handle):
            try:
                yield line_no, _decode(raw)
            except _BadRecord as bad:
                yield line_no, _error(source, line_no, str(bad))


def _read_text(path: Path, source: str, options: _Options) -> Iterator[Record]:
    for line_no, line in _decoded_lines(path, source):
        if isinstance(line, Record):
            yield line
            continue
        line = _strip_newline(line)
        if line.strip():
            yield _text_record(line, source, line_no, options)


def _text_record(line: str, source: str, line_no: int, options: _Options) -> Record:
    try:
        prompt = _render(options.template, {"text": line}) if options.template else line
        prompt = _non_empty(prompt)
    except _BadRecord as bad:
        return _error(source, line_no, str(bad))
    return Record(_default_id(source, line_no), source, line_no, prompt=prompt)


def _read_jsonl(
    path: Path, source: str, options: _Options, *, batch_only: bool
) -> Iterator[Record]:
    for line_no, line in _decoded_lines(path, source):
        if isinstance(line, Record):
            yield line
        elif line.strip():
            yield _jsonl_record(line, source, line_no, options, batch_only)


def _jsonl_record(
    line: str, source: str, line_no: int, options: _Options, batch_only: bool
) -> Record:
    try:
        obj = _parse_object(line)
    except _BadRecord as bad:
        return _error(source, line_no, str(bad))
    if batch_only or is_batch_line(obj):
        record, problem = batch_record(obj, source, line_no, _checked_messages)
        if problem is None:
            return record
        return replace(record, error=f"OpenAI Batch request: {problem}")
    return options.take_sampling(_object_record(obj, source, line_no, options))


def _checked_messages(value: Any) -> list[Message]:
    try:
        return _messages(value)
    except _BadRecord as bad:
        raise ValueError(str(bad)) from None


def _object_record(obj: Mapping[str, Any], source: str, line_no: int, options: _Options) -> Record:
    """A record from one JSON object or one Parquet/Arrow row."""
    record_id = _id_from(obj.get(options.id_field), source, line_no)
    fields = {k: v for k, v in obj.items() if k not in (options.id_field, "prompt", "messages")}
    try:
        if options.template is None and options.prompt_field is None and "prompt" not in obj:
            if "messages" not in obj:
                raise _BadRecord(
                    f"no 'prompt' or 'messages' field (fields: {describe_names(obj)}); add one, "
                    f"or choose the prompt field with {_PROMPT_OPTION} NAME or build prompts "
                    f"with {_TEMPLATE_OPTION}"
                )
            messages = _messages(obj["messages"])
            return Record(record_id, source, line_no, messages=messages, fields=fields)
        prompt = _prompt_from(obj, options, what="field")
    except _BadRecord as bad:
        return _error(source, line_no, str(bad), record_id=record_id, fields=fields)
    return Record(record_id, source, line_no, prompt=prompt, fields=fields)


def _parse_object(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadRecord(
            f"invalid JSON: {exc.msg} (column {exc.colno}); each line must be one complete "
            "JSON object"
        ) from exc
    except RecursionError as exc:
        raise _BadRecord("invalid JSON: nested too deeply") from exc
    if not isinstance(obj, dict):
        raise _BadRecord(
            f"line is a JSON {_json_type(obj)}, not an object; each line must be an object "
            'such as {"prompt": "..."}'
        )
    return obj


def _messages(value: Any) -> list[Message]:
    """Check chat messages: a non-empty list of {"role": str, "content": str} objects."""
    shape = 'each message must be {"role": "...", "content": "..."}'
    if not isinstance(value, list) or not value:
        raise _BadRecord(f"'messages' must be a non-empty list of messages; {shape}")
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise _BadRecord(f"message {number} is a {_json_type(message)}, not an object; {shape}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise _BadRecord(f"message {number} has no string {key!r}; {shape}")
    if not any(message["content"].strip() for message in value):
        raise _BadRecord("empty prompt: every message has empty content; give it some text")
    return [dict(message) for message in value]


def _read_table(path: Path, source: str, delimiter: str, options: _Options) -> Iterator[Record]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    what = "comma" if delimiter == "," else "tab"
    bad_lines: list[tuple[int, str]] = []
    with _open(path, source) as handle:
        reader = csv.reader(_decoded(_numbered(handle), bad_lines), delimiter=delimiter)
        header = _table_header(reader, bad_lines, source, options)
        end = reader.line_num
        while header is not None:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                end = reader.line_num
                yield _error(source, start, f"row cannot be parsed: {exc}; check its quoting")
                continue
            end = reader.line_num
            row_bad = [item for item in bad_lines if item[0] <= end]
            del bad_lines[: len(row_bad)]
            if not any(cell.strip() for cell in row):
                continue
            if row_bad:
                line_no, problem = row_bad[0]
                which = "line" if line_no == start else f"line {line_no} of this row"
                yield _error(source, start, f"{which} {problem}")
                continue
            if len(row) != len(header):
                yield _error(
                    source,
                    start,
                    f"row has {len(row)} columns but the header has {len(header)}; quote values "
                    f"that contain a {what} or a line break, or remove the extra {what}",
                )
                continue
            record = _table_record(dict(zip(header, row, strict=True)), source, start, options)
            yield options.take_sampling(record)


def _table_header(
    reader: Iterator[list[str]], bad_lines: list[tuple[int, str]], source: str, options: _Options
) -> list[str] | None:
    """The header row (None for an empty file); checks the prompt column can be found."""
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except csv.Error as exc:
        raise InputError(f"{source}: header cannot be parsed: {exc}; check its quoting") from exc
    if bad_lines:
        line_no, problem = bad_lines[0]
        raise InputError(f"{source}: header line {line_no} {problem}")
    if header is None:
        return None
    header = [cell.strip() for cell in header]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(
            f"{source}: header repeats column(s) {describe_names(duplicates)}; rename them so "
            "each column name is unique"
        )
    if options.template is None:
        wanted = options.prompt_field or "prompt"
        if wanted not in header:
            how = (
                f"the column given with {_PROMPT_OPTION} is not there; check its spelling"
                if options.prompt_field
                else f"choose the prompt column with {_PROMPT_OPTION} NAME or build prompts "
                f"with {_TEMPLATE_OPTION}"
            )
            raise InputError(
                f"{source} has no {wanted!r} column (columns: {describe_names(header)}); {how}"
            )
    return header


def _table_record(values: dict[str, str], source: str, line_no: int, options: _Options) -> Record:
    record_id = _id_from(values.get(options.id_field), source, line_no)
    fields: dict[str, Any] = {k: v for k, v in values.items() if k != options.id_field}
    try:
        prompt = _prompt_from(values, options, what="column")
    except _BadRecord as bad:
        return _error(source, line_no, str(bad), record_id=record_id, fields=fields)
    return Record(record_id, source, line_no, prompt=prompt, fields=fields)


def _prompt_from(values: Mapping[str, Any], options: _Options, *, what: str) -> str:
    """The prompt from the template, the chosen field, or the 'prompt' field, in that order."""
    if options.template is not None:
        return _non_empty(_render(options.template, values))
    name = options.prompt_field or "prompt"
    if name not in values:
        raise _BadRecord(
            f"no {name!r} {what} ({what}s: {describe_names(values)}); add it, or choose the "
            f"prompt {what} with {_PROMPT_OPTION} NAME"
        )
    prompt = values[name]
    if not isinstance(prompt, str):
        raise _BadRecord(
            f"{what} {name!r} is a JSON {_json_type(prompt)}, not a string; the prompt must be "
            f"text (build it from other fields with {_TEMPLATE_OPTION})"
        )
    return _non_empty(prompt)


def _render(template: PromptTemplate, fields: Mapping[str, Any]) -> str:
    try:
        return template.render(fields)
    except TemplateRenderError as exc:
        raise _BadRecord(str(exc)) from exc


def _non_empty(prompt: str) -> str:
    if not prompt.strip():
        raise _BadRecord("empty prompt; give this record some text or remove it")
    return prompt


def _open(path: Path, source: str) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise InputError(f"input file {source} does not exist; check the path") from exc
    except OSError as exc:
        raise InputError(f"cannot read input file {source}: {exc.strerror}") from exc


def _numbered(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) pairs; a UTF-8 byte order mark on line 1 is dropped."""
    for line_no, raw in enumerate(handle, start=1):
        yield line_no, raw.removeprefix(_BOM) if line_no == 1 else raw


def _decoded(lines: Iterator[tuple[int, bytes]], bad: list[tuple[int, str]]) -> Iterator[str]:
    """Decoded lines for the csv module; invalid lines go on `bad` and are fed in repaired.

    Replacing bad bytes keeps the csv parser in step (they can never be quotes or delimiters),
    so the row holding a bad line is found and reported without losing the rows after it.
    """
    for line_no, raw in lines:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((line_no, _utf8_problem(raw, exc)))
            yield raw.decode("utf-8", errors="replace")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(f"line {_utf8_problem(raw, exc)}") from exc


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return (
        f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1}); "
        "re-save the file as UTF-8"
    )


def _strip_newline(line: str) -> str:
    """Drop the line ending only (LF or CRLF); other whitespace is part of the prompt."""
    if line.endswith("\r\n"):
        return line[:-2]
    return line.removesuffix("\n")


def _id_from(value: Any, source: str, line_no: int) -> str:
    """The record's own id when it has a non-empty one, else `file:line`."""
    if value is None or not str(value).strip():
        return _default_id(source, line_no)
    return str(value)


def _default_id(source: str, line_no: int) -> str:
    return f"{source}:{line_no}"


def _error(
    source: str,
    line_no: int,
    message: str,
    *,
    record_id: str | None = None,
    fields: dict[str, Any] | None = None,
) -> Record:
    return Record(
        id=record_id or _default_id(source, line_no),
        source=source,
        line=line_no,
        fields=fields or {},
        error=message,
    )


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    if value is None:
        return "null"
    return "object" if isinstance(value, dict) else names.get(type(value), type(value).__name__)
