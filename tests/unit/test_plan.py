"""Work units: deterministic cutting, duplicate ids, input digests."""

from __future__ import annotations

from pathlib import Path

from hpcinfer.records import Record
from hpcinfer.run.plan import cut_units, file_digests, mark_duplicates, summarize


def rec(source: str, line: int, rid: str | None = None, error: str | None = None) -> Record:
    return Record(
        id=rid or f"{source}:{line}",
        source=source,
        line=line,
        prompt=None if error else f"p{line}",
        error=error,
    )


def test_cut_units_groups_consecutive_records_by_unit_size() -> None:
    records = [rec("a.txt", n) for n in range(1, 8)]
    units = list(cut_units(records, 3))
    assert [u.id for u in units] == ["a.txt:1-3", "a.txt:4-6", "a.txt:7-7"]
    assert [u.index for u in units] == [0, 1, 2]
    assert [u.size for u in units] == [3, 3, 1]
    assert [r for u in units for r in u.records] == records


def test_cut_units_starts_a_new_unit_at_a_source_change() -> None:
    records = [rec("a.txt", 1), rec("a.txt", 2), rec("b.txt", 1), rec("b.txt", 3)]
    units = list(cut_units(records, 10))
    assert [u.id for u in units] == ["a.txt:1-2", "b.txt:1-3"]
    assert [u.index for u in units] == [0, 1]
    for unit in units:
        assert len({r.source for r in unit.records}) == 1


def test_cut_units_ids_name_the_lines_not_positions() -> None:
    # blank lines are skipped by readers, so a unit's lines need not be contiguous
    records = [rec("a.txt", 2), rec("a.txt", 5), rec("a.txt", 9)]
    assert [u.id for u in cut_units(records, 2)] == ["a.txt:2-5", "a.txt:9-9"]


def test_cut_units_is_deterministic_and_lazy() -> None:
    records = [rec("d/x.in", n) for n in range(1, 50)] + [rec("d/y.in", n) for n in range(1, 5)]
    first = [(u.id, u.index, u.records) for u in cut_units(records, 7)]
    second = [(u.id, u.index, u.records) for u in cut_units(iter(records), 7)]
    assert first == second
    assert len({uid for uid, _, _ in first}) == len(first)


def test_cut_units_of_nothing_is_nothing() -> None:
    assert list(cut_units([], 4)) == []


def test_unit_size_one() -> None:
    units = list(cut_units([rec("a", 1), rec("a", 2)], 1))
    assert [u.id for u in units] == ["a:1-1", "a:2-2"]


def test_summarize_counts_read_errors() -> None:
    unit = next(cut_units([rec("a", 1), rec("a", 2, error="bad"), rec("a", 3)], 5))
    summary = summarize(unit)
    assert (summary.id, summary.index, summary.size, summary.read_errors) == ("a:1-3", 0, 3, 1)


def test_mark_duplicates_keeps_the_first_and_names_both_places() -> None:
    records = [
        rec("a.jsonl", 1, "q1"),
        rec("a.jsonl", 2, "q2"),
        rec("b.jsonl", 7, "q1"),
        rec("b.jsonl", 8, "q1"),
    ]
    out = list(mark_duplicates(records))
    assert len(out) == 4  # nothing is dropped
    assert out[0] == records[0] and out[1] == records[1]
    for dup, line in ((out[2], 7), (out[3], 8)):
        assert dup.id == "q1"
        assert dup.prompt is None and dup.messages is None
        assert dup.error is not None
        assert f"b.jsonl:{line}" in dup.error
        assert "first used at a.jsonl:1" in dup.error
        assert "'q1'" in dup.error


def test_mark_duplicates_leaves_unique_records_alone() -> None:
    records = [rec("a", n) for n in range(1, 5)]
    assert list(mark_duplicates(records)) == records


def test_file_digests_change_with_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\n")
    b.write_text("one\n")
    first = file_digests([a, b], ["a.txt", "b.txt"])
    assert set(first) == {"a.txt", "b.txt"}
    assert first["a.txt"] == first["b.txt"]  # content, not name
    assert file_digests([a], ["a.txt"]) == {"a.txt": first["a.txt"]}
    a.write_text("one\ntwo\n")
    second = file_digests([a, b], ["a.txt", "b.txt"])
    assert second["a.txt"] != first["a.txt"]
    assert second["b.txt"] == first["b.txt"]


def test_file_digests_of_a_large_file_cover_every_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    data = bytearray(b"x" * (3 << 20))
    path.write_bytes(bytes(data))
    before = file_digests([path], ["big"])["big"]
    data[-1:] = b"y"  # a change in the last 1 MiB chunk
    path.write_bytes(bytes(data))
    assert file_digests([path], ["big"])["big"] != before
