"""Exports: results.jsonl in unit order, simple_test.py's text format, counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.outputs.exporters import export_all, text_export_block, text_export_name
from hpcinfer.outputs.store import OutputStore, unit_file_name
from hpcinfer.records import Record, Result
from hpcinfer.run.rows import ROW_FIELDS, make_row
from hpcinfer.spec import OutputSpec


def ok_row(source: str, line: int, prompt: str, text: str, **extra: Any) -> dict[str, Any]:
    record = Record(id=f"{source}:{line}", source=source, line=line, prompt=prompt, **extra)
    result = Result(
        id=record.id, text=text, finish_reason="length", prompt_tokens=3, output_tokens=5
    )
    return make_row(record, result, worker=0, model="m")


def error_row(source: str, line: int, prompt: str | None, error: str) -> dict[str, Any]:
    record = Record(id=f"{source}:{line}", source=source, line=line, prompt=prompt)
    return make_row(record, Result.failed(record.id, error), worker=1, model="m")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    s = OutputStore(tmp_path / "out")
    s.prepare("fp", {}, restart=False)
    return s


def test_results_jsonl_follows_unit_order_not_commit_order(store: OutputStore) -> None:
    store.commit("u1", [ok_row("a.in", 3, "c", "C"), ok_row("a.in", 4, "d", "D")])
    store.commit("u0", [ok_row("a.in", 1, "a", "A"), ok_row("a.in", 2, "b", "B")])
    store.commit("u2", [ok_row("b.in", 1, "e", "E")])
    n = export_all(store, ["u0", "u1", "u2"], OutputSpec(), store.root)["records"]
    rows = read_jsonl(store.root / "results.jsonl")
    assert n == 5
    assert [r["text"] for r in rows] == ["A", "B", "C", "D", "E"]
    assert list(rows[0])[: len(ROW_FIELDS)] == list(ROW_FIELDS)


def test_results_jsonl_skips_uncommitted_units(store: OutputStore) -> None:
    store.commit("u0", [ok_row("a.in", 1, "a", "A")])
    counts = export_all(store, ["u0", "not-yet"], OutputSpec(), store.root)
    n = counts["records"]
    assert n == 1 and counts["records"] == 1
    assert len(read_jsonl(store.root / "results.jsonl")) == 1


def test_results_jsonl_drops_prompts_unless_asked(store: OutputStore) -> None:
    chat = Record(id="c", source="c.jsonl", line=1, messages=[{"role": "user", "content": "hi"}])
    store.commit(
        "u0",
        [
            ok_row("a.in", 1, "secret prompt", "A", fields={"topic": "x"}),
            make_row(chat, Result(id="c", text="yo"), worker=0, model="m"),
        ],
    )
    export_all(store, ["u0"], OutputSpec(), store.root)
    rows = read_jsonl(store.root / "results.jsonl")
    assert all("prompt" not in r and "messages" not in r for r in rows)
    assert "secret prompt" not in (store.root / "results.jsonl").read_text()
    assert rows[0]["fields"] == {"topic": "x"}

    export_all(store, ["u0"], OutputSpec(include_prompt=True), store.root)
    rows = read_jsonl(store.root / "results.jsonl")
    assert rows[0]["prompt"] == "secret prompt"
    assert rows[1]["messages"] == [{"role": "user", "content": "hi"}]


def test_no_text_export_unless_asked(store: OutputStore) -> None:
    store.commit("u0", [ok_row("a.in", 1, "a", "A")])
    export_all(store, ["u0"], OutputSpec(), store.root)
    assert not (store.root / "text").exists()


def test_text_export_is_simple_test_format_exactly(store: OutputStore) -> None:
    tricky = "say \"hi\" and 'bye'\nthen stop"
    store.commit(
        "u0",
        [
            ok_row("prompts/0.in", 1, "Hello, my name is", " Bob."),
            ok_row("prompts/0.in", 2, tricky, "line1\nline2 'q'"),
            error_row("prompts/0.in", 3, "too long", "prompt has 9000 tokens"),
        ],
    )
    store.commit("u1", [ok_row("prompts/1.in", 1, "x", "y")])
    spec = OutputSpec(exports=["jsonl", "text"])
    export_all(store, ["u0", "u1"], spec, store.root)
    text = (store.root / "text" / "prompts" / "0.out").read_text(encoding="utf-8")
    assert text == (
        "Prompt: 'Hello, my name is', Generated text: ' Bob.'\n"
        + "Prompt: 'say \"hi\" and \\'bye\\'\\nthen stop', "
        "Generated text: \"line1\\nline2 'q'\"\n"
        "Prompt: 'too long', Error: 'prompt has 9000 tokens'\n"
    )
    assert len(text.splitlines()) == 3  # one line per record, newlines escaped
    other = (store.root / "text" / "prompts" / "1.out").read_text(encoding="utf-8")
    assert other == "Prompt: 'x', Generated text: 'y'\n"


def test_text_export_block_for_chat_records_and_missing_prompt() -> None:
    chat = Record(id="c", source="c", line=1, messages=[{"role": "user", "content": "hi"}])
    row = make_row(chat, Result(id="c", text="yo"), worker=0, model="m")
    assert text_export_block(row) == (
        "Prompt: [{'role': 'user', 'content': 'hi'}], Generated text: 'yo'\n"
    )
    unreadable = error_row("a.in", 4, None, "line 4 is not valid UTF-8")
    assert text_export_block(unreadable) == "Prompt: None, Error: 'line 4 is not valid UTF-8'\n"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("prompts/3.in", "prompts/3.out"),
        ("3.in", "3.out"),
        ("data/q.jsonl", "data/q.out"),
        ("noext", "noext.out"),
        ("/abs/path/7.in", "7.out"),
        ("../up/8.in", "8.out"),
        ("a/../../b/9.txt", "9.out"),
    ],
)
def test_text_export_name(source: str, name: str) -> None:
    assert text_export_name(source) == name


def test_text_export_of_absolute_source_stays_inside_text_dir(store: OutputStore) -> None:
    store.commit("u0", [ok_row("/elsewhere/5.in", 1, "a", "A")])
    export_all(store, ["u0"], OutputSpec(exports=["text"]), store.root)
    assert (store.root / "text" / "5.out").exists()
    assert [p.name for p in (store.root / "text").rglob("*") if p.is_file()] == ["5.out"]


def test_counts(store: OutputStore) -> None:
    store.commit(
        "u0",
        [
            ok_row("a.in", 1, "a", "A"),
            ok_row("a.in", 2, "b", "B"),
            error_row("a.in", 3, "c", "bad"),
        ],
    )
    counts = export_all(store, ["u0"], OutputSpec(), store.root)
    n = counts["records"]
    assert n == 3
    assert counts == {
        "records": 3,
        "ok": 2,
        "error": 1,
        "prompt_tokens": 6,
        "output_tokens": 10,
    }


def test_export_rewrites_results_on_each_run(store: OutputStore) -> None:
    store.commit("u0", [ok_row("a.in", 1, "a", "A")])
    export_all(store, ["u0"], OutputSpec(), store.root)
    store.commit("u1", [ok_row("a.in", 2, "b", "B")])
    export_all(store, ["u0", "u1"], OutputSpec(), store.root)
    assert [r["text"] for r in read_jsonl(store.root / "results.jsonl")] == ["A", "B"]
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]


def test_text_export_keeps_every_record_when_names_collide(store: OutputStore) -> None:
    store.commit("u0", [ok_row("/run1/0.in", 1, "first", "A")])
    store.commit("u1", [ok_row("/run2/0.in", 1, "second", "B")])
    export_all(store, ["u0", "u1"], OutputSpec(exports=["text"]), store.root)
    exported = "".join(p.read_text(encoding="utf-8") for p in (store.root / "text").rglob("*.out"))
    assert "'first'" in exported
    assert "'second'" in exported


def test_failed_export_leaves_no_half_text_file(store: OutputStore) -> None:
    store.commit("u0", [ok_row("a.in", 1, "a", "A")])
    store.commit("u1", [ok_row("a.in", 2, "b", "B")])
    (store.units_dir / unit_file_name("u1")).write_text("{corrupt\n")
    with pytest.raises(json.JSONDecodeError):
        export_all(store, ["u0", "u1"], OutputSpec(exports=["text"]), store.root)
    assert not (store.root / "results.jsonl").exists()
    assert not (store.root / "text" / "a.out").exists()


def test_parquet_export_round_trips_rows_with_a_fixed_schema(store: OutputStore) -> None:
    import importlib.util

    from tests.conftest import require

    require("pyarrow", importlib.util.find_spec("pyarrow") is not None, "pip install pyarrow")
    import pyarrow.parquet as pq

    store.commit("u0", [ok_row("a.in", 1, "a", "A", fields={"n": 1})])
    store.commit("u1", [error_row("a.in", 2, "b", "bad JSON"), ok_row("a.in", 3, "c", "C")])
    export_all(store, ["u0", "u1"], OutputSpec(exports=["jsonl", "parquet"]), store.root)
    table = pq.read_table(store.root / "results.parquet")
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["a.in:1", "a.in:2", "a.in:3"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"] == "bad JSON" and rows[1]["text"] is None
    assert json.loads(rows[0]["fields"]) == {"n": 1}
    assert "prompt" not in table.column_names  # like results.jsonl, unless asked
    assert table.schema.field("line").type == "int64"


def test_parquet_requested_without_pyarrow_fails_before_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpcinfer.errors import SpecError
    from hpcinfer.outputs import exporters

    monkeypatch.setattr(exporters, "parquet_available", lambda: False)
    with pytest.raises(SpecError, match="pyarrow"):
        exporters.check_exports(OutputSpec(exports=["parquet"]))
    exporters.check_exports(OutputSpec(exports=["jsonl", "text"]))  # fine without pyarrow


def test_parquet_keeps_every_sample_and_the_logprobs_typed(store: OutputStore) -> None:
    import importlib.util

    from tests.conftest import require

    require("pyarrow", importlib.util.find_spec("pyarrow") is not None, "pip install pyarrow")
    import pyarrow.parquet as pq

    tokens = [
        [{"token": " a", "logprob": -0.1, "top_logprobs": [{"token": " a", "logprob": -0.1}]}],
        [{"token": " b", "logprob": -2.5, "top_logprobs": []}],
    ]
    record = Record(id="r", source="in.jsonl", line=1, prompt="p")
    result = Result(id="r", text=" a", finish_reason="stop", texts=[" a", " b"],
                    finish_reasons=["stop", "length"], logprobs=tokens)  # fmt: skip
    store.commit("u0", [make_row(record, result, worker=0, model="m"), ok_row("a.in", 2, "q", "Q")])
    export_all(store, ["u0"], OutputSpec(exports=["jsonl", "parquet"]), store.root)
    table = pq.read_table(store.root / "results.parquet")
    many, one = table.to_pylist()
    assert many["texts"] == [" a", " b"] and many["finish_reasons"] == ["stop", "length"]
    assert many["logprobs"] == tokens
    assert one["texts"] is None and one["finish_reasons"] is None and one["logprobs"] is None
    assert str(table.schema.field("logprobs").type).startswith("list<element: list<element: struct")
