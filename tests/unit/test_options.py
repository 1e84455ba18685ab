"""Per-record options: a record's own max_tokens from a named field."""

from __future__ import annotations

from hpcinfer.inputs.options import apply_max_tokens_field
from hpcinfer.records import Record


def rec(line: int, **fields: object) -> Record:
    return Record(
        id=f"a.jsonl:{line}", source="a.jsonl", line=line, prompt="p", fields=dict(fields)
    )


def test_field_becomes_the_records_budget_and_leaves_the_fields() -> None:
    [out] = apply_max_tokens_field([rec(1, max_tokens=40, topic="x")], "max_tokens")
    assert out.max_tokens == 40 and out.fields == {"topic": "x"} and out.error is None


def test_csv_strings_are_accepted() -> None:
    [out] = apply_max_tokens_field([rec(1, n=" 12 ")], "n")
    assert out.max_tokens == 12


def test_records_without_the_field_keep_the_jobs_budget() -> None:
    [out] = apply_max_tokens_field([rec(1, topic="x")], "max_tokens")
    assert out.max_tokens is None and out.fields == {"topic": "x"}


def test_no_field_configured_changes_nothing() -> None:
    record = rec(1, max_tokens=5)
    assert list(apply_max_tokens_field([record], None)) == [record]


def test_bad_values_become_error_rows_naming_the_place_and_value() -> None:
    outs = list(
        apply_max_tokens_field(
            [rec(1, max_tokens=0), rec(2, max_tokens="many"), rec(3, max_tokens=True)], "max_tokens"
        )
    )
    assert all(o.error and o.prompt is None for o in outs)
    assert "a.jsonl:2" in (outs[1].error or "") and "'many'" in (outs[1].error or "")


def test_error_records_pass_through_untouched() -> None:
    bad = Record(id="x", source="a.jsonl", line=1, error="bad JSON")
    assert list(apply_max_tokens_field([bad], "max_tokens")) == [bad]
