"""Columnar inputs: Parquet files and Hugging Face datasets saved with `save_to_disk`.

Both are read a record batch at a time with pyarrow (Parquet by row group, a saved dataset
by the Arrow stream files listed in its state.json), so a dataset of any size streams
through in little memory. Each row becomes a mapping, turned into a record as a JSONL
object would be (a `prompt` or `messages` column, a chosen column, or a template over the
columns). Rows are numbered from 1 over the whole input, so an error row names `file:N`,
row N.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hpcinfer.errors import InputError
from hpcinfer.inputs.template import describe_names

COLUMNAR = ("parquet", "hf-dataset")
_STATE = "state.json"
_BATCH_ROWS = 1024


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `save_to_disk`: a Dataset (state.json + *.arrow), or a
    DatasetDict (dataset_dict.json; refused with its split names when read)."""
    dataset = (path / _STATE).is_file() and (path / "dataset_info.json").is_file()
    return dataset or (path / "dataset_dict.json").is_file()


def _pyarrow(source: str) -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as exc:
        raise InputError(
            f"{source} needs pyarrow to be read; pip install pyarrow "
            "(or pip install 'hpcinfer[parquet]')"
        ) from exc
    return pyarrow


def dataset_files(path: Path, source: str) -> list[Path]:
    """The Arrow stream files of a saved dataset, in its own order (state.json)."""
    if (path / "dataset_dict.json").is_file() and not (path / _STATE).is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / _STATE).is_file())
        raise InputError(
            f"{source} is a saved DatasetDict; name one split directory "
            f"(splits: {describe_names(splits)}), e.g. {source}/{splits[0] if splits else 'train'}"
        )
    try:
        state = json.loads((path / _STATE).read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{source}/{_STATE} cannot be read as a saved dataset's state ({exc}); save the "
            "dataset again with Dataset.save_to_disk"
        ) from exc
    files = [path / name for name in names]
    missing = [name for name, file in zip(names, files, strict=True) if not file.is_file()]
    if missing:
        raise InputError(
            f"{source} lists {describe_names(missing)} in {_STATE} but the file is missing; "
            "copy the whole dataset directory"
        )
    return files


def input_files(path: Path) -> list[Path]:
    """The files whose bytes make up one input (for the resume digest)."""
    if path.is_dir() and is_saved_dataset(path):
        return [path / _STATE, *dataset_files(path, path.as_posix())]
    return [path]


def column_names(path: Path, kind: str, source: str) -> list[str]:
    """The columns of a Parquet file or saved dataset, from its schema only."""
    pa = _pyarrow(source)
    try:
        if kind == "parquet":
            return list(pa.parquet.ParquetFile(str(path)).schema_arrow.names)
        files = dataset_files(path, source)
        if not files:
            return []
        with pa.memory_map(str(files[0])) as handle:
            return list(pa.ipc.open_stream(handle).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{source} cannot be read as {_what(kind)}: {exc}") from exc


def check_columns(
    columns: Sequence[str], source: str, prompt_field: str | None, templated: bool
) -> None:
    """Fail before the first record when the prompt cannot come from these columns."""
    if templated:
        return
    wanted = prompt_field or "prompt"
    if wanted in columns or (prompt_field is None and "messages" in columns):
        return
    how = (
        "the column given with --prompt-column is not there; check its spelling"
        if prompt_field
        else "choose the prompt column with --prompt-column NAME or build prompts with --template"
    )
    raise InputError(
        f"{source} has no {wanted!r} column (columns: {describe_names(columns)}); {how}"
    )


def read_rows(path: Path, kind: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) per row; a batch that cannot be read ends the input with an InputError
    naming the first row it held."""
    pa = _pyarrow(source)
    row_no = 0
    try:
        for batch in _batches(pa, path, kind, source):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, {key: _plain(value) for key, value in row.items()}
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"{source}: row {row_no + 1} and after cannot be read as {_what(kind)}: {exc}"
        ) from exc


def _batches(pa: Any, path: Path, kind: str, source: str) -> Iterator[Any]:
    if kind == "parquet":
        yield from pa.parquet.ParquetFile(str(path)).iter_batches(batch_size=_BATCH_ROWS)
        return
    for file in dataset_files(path, source):
        with pa.memory_map(str(file)) as handle:
            yield from pa.ipc.open_stream(handle)


def _plain(value: Any) -> Any:
    """A JSON value for a cell (output rows are JSON): dates as ISO text, bytes as base64."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


def _what(kind: str) -> str:
    return "Parquet" if kind == "parquet" else "a saved Hugging Face dataset"
