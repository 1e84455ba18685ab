"""Exports written at the end of every run, from the committed units, in input order."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from hpcinfer.errors import SpecError
from hpcinfer.outputs.atomic import atomic_writer
from hpcinfer.outputs.batch_output import BATCH_OUTPUT, batch_line
from hpcinfer.outputs.store import OutputStore
from hpcinfer.spec import OutputSpec

PROMPT_KEYS = ("prompt", "messages")


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def export_all(
    store: OutputStore, unit_ids: Sequence[str], spec: OutputSpec, out_dir: Path
) -> dict[str, int]:
    """Write results.jsonl (always), batch_output.jsonl (for OpenAI Batch inputs), text
    `.out` files and parquet when asked; return counts.

    Every file is written atomically: a failed export leaves the previous files whole."""
    counts = {"records": 0, "ok": 0, "error": 0, "prompt_tokens": 0, "output_tokens": 0}
    names = TextNames()
    created = int(time.time())
    with contextlib.ExitStack() as stack:
        results = stack.enter_context(atomic_writer(out_dir / "results.jsonl"))
        text_files: dict[str, IO[str]] = {}
        batch: IO[str] | None = None
        for row in store.iter_rows(unit_ids):
            _count(counts, row)
            results.write(
                json.dumps(public_row(row, spec.include_prompt), ensure_ascii=False) + "\n"
            )
            if row.get("batch_url"):  # an OpenAI Batch request is answered in kind too
                if batch is None:
                    batch = stack.enter_context(atomic_writer(out_dir / BATCH_OUTPUT))
                batch.write(json.dumps(batch_line(row, created), ensure_ascii=False) + "\n")
            if "text" in spec.exports:
                source = row["source"]
                if source not in text_files:
                    path = out_dir / "text" / names.name_for(source)
                    text_files[source] = stack.enter_context(atomic_writer(path))
                text_files[source].write(text_export_block(row))
    if "parquet" in spec.exports:
        write_parquet(out_dir / "results.parquet", out_dir / "results.jsonl", spec.include_prompt)
    return counts


def _count(counts: dict[str, int], row: dict[str, Any]) -> None:
    endpoint = row.get("endpoint")
    if endpoint:
        key = f"endpoint {endpoint}"
        counts[key] = counts.get(key, 0) + 1
    counts["records"] += 1
    counts["ok" if row.get("status") == "ok" else "error"] += 1
    counts["prompt_tokens"] += row.get("prompt_tokens") or 0
    counts["output_tokens"] += row.get("output_tokens") or 0


def public_row(row: dict[str, Any], include_prompt: bool) -> dict[str, Any]:
    if include_prompt:
        return row
    return {k: v for k, v in row.items() if k not in PROMPT_KEYS}


def text_export_name(source: str) -> str:
    """`prompts/3.in` -> `prompts/3.out` (simple_test.py's `{rank}.in` -> `{rank}.out`)."""
    path = PurePosixPath(source)
    if path.is_absolute() or ".." in path.parts:
        path = PurePosixPath(path.name)
    return str(path.with_suffix(".out"))


class TextNames:
    """One distinct `.out` name per source: `3.in` -> `3.out`; a second source that would get
    the same name (`3.txt`, or `/other/3.in`) keeps its suffix (`3.txt.out`) or gets a number."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def name_for(self, source: str) -> str:
        preferred = text_export_name(source)
        path = PurePosixPath(preferred)
        candidates = [preferred, str(path.with_name(PurePosixPath(source).name + ".out"))]
        candidates += [str(path.with_name(f"{path.stem}-{n}.out")) for n in range(2, 10_000)]
        for name in candidates:
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise RuntimeError(f"no free text export name for {source}")


def text_export_block(row: dict[str, Any]) -> str:
    """simple_test.py's format: `Prompt: {prompt!r}, Generated text: {text!r}`; errors are kept."""
    prompt = row.get("prompt") if "prompt" in row else row.get("messages")
    if row.get("status") == "ok":
        return f"Prompt: {prompt!r}, Generated text: {row.get('text')!r}\n"
    return f"Prompt: {prompt!r}, Error: {row.get('error')!r}\n"


def check_exports(spec: OutputSpec) -> None:
    """Fail before any engine starts if an export cannot be written at the end."""
    if "parquet" in spec.exports and not parquet_available():
        raise SpecError(
            "output.exports includes parquet but pyarrow is not installed; "
            "pip install pyarrow (or pip install 'hpcinfer[parquet]'), or drop parquet"
        )


_PARQUET_BATCH = 10_000


def write_parquet(path: Path, jsonl: Path, include_prompt: bool) -> None:
    """results.jsonl as Parquet with a fixed schema (input fields and messages as JSON text;
    every sample and the log-probabilities as typed lists, null where a record did not ask
    for them), streamed in batches so millions of rows need little memory; written
    atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    alternative = pa.struct([("token", pa.string()), ("logprob", pa.float64())])
    token = pa.struct(
        [("token", pa.string()), ("logprob", pa.float64()),
         ("top_logprobs", pa.list_(alternative))]
    )  # fmt: skip
    columns = [
        ("id", pa.string()), ("source", pa.string()), ("line", pa.int64()),
        ("status", pa.string()), ("error", pa.string()), ("text", pa.string()),
        ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("latency_s", pa.float64()), ("ttft_s", pa.float64()),
        ("endpoint", pa.string()), ("worker", pa.int64()), ("model", pa.string()),
        ("fields", pa.string()), ("texts", pa.list_(pa.string())),
        ("finish_reasons", pa.list_(pa.string())), ("logprobs", pa.list_(pa.list_(token))),
    ]  # fmt: skip
    if include_prompt:
        columns += [("prompt", pa.string()), ("messages", pa.string())]
    schema = pa.schema(columns)
    nested = {"fields", "messages"}
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(str(tmp), schema) as writer, jsonl.open(encoding="utf-8") as handle:
        batch: list[dict[str, Any]] = []
        for line in handle:
            row = json.loads(line)
            batch.append(
                {
                    name: json.dumps(row[name]) if name in nested and name in row else row.get(name)
                    for name, _ in columns
                }
            )
            if len(batch) >= _PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    tmp.replace(path)
