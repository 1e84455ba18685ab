"""--retry-errors planning: which units rerun, which rows are kept, how they merge, and which
spec changes the output directory takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.errors import ResumeConflictError
from hpcinfer.outputs.store import OutputStore
from hpcinfer.records import Record
from hpcinfer.run.plan import cut_units, summarize
from hpcinfer.run.retry import merge_rows, plan_retry, retry_unit


def records(n: int) -> list[Record]:
    return [Record(id=f"r{i}", source="p.txt", line=i + 1, prompt=f"q{i}") for i in range(n)]


def row(i: int, status: str = "ok") -> dict[str, Any]:
    return {"id": f"r{i}", "status": status, "text": None if status != "ok" else f"a{i}"}


def identity(**inputs: Any) -> dict[str, Any]:
    return {"model": None, "inputs": inputs, "unit_size": 3, "input_files": {"p.txt": "d1"}}


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    s = OutputStore(tmp_path / "out")
    s.prepare("fp1", identity(template="{{ txt }}"), restart=False)
    return s


def test_only_units_with_error_rows_are_retried_and_ok_rows_counted(store: OutputStore) -> None:
    units = list(cut_units(records(7), 3))  # 3 + 3 + 1
    store.commit(units[0].id, [row(0), row(1, "error"), row(2)])
    store.commit(units[1].id, [row(3), row(4), row(5)])
    store.commit(units[2].id, [row(6, "error")])
    plan = plan_retry(store, [summarize(u) for u in units])
    assert plan.failed == {units[0].id: 1, units[2].id: 1}
    assert plan.records == 2 and plan.kept_ok == 5
    assert plan.describe(7, 0) == "retrying 2 failed records of 7; 5 ok kept"
    assert plan.describe(9, 2).endswith("; 2 never run, run now")


def test_a_retried_unit_carries_only_failed_records_and_merges_in_order() -> None:
    unit = next(cut_units(records(4), 4))
    committed = [row(0, "error"), row(1), row(2, "error"), row(3)]
    retry = retry_unit(unit, committed, "out")
    assert retry.id == unit.id and [r.id for r in retry.records] == ["r0", "r2"]
    assert retry.size == 2  # what the scheduler counts: the records that run
    new = [{"id": "r0", "status": "ok", "text": "new0"}, {"id": "r2", "status": "ok"}]
    merged = merge_rows(retry.kept, new)
    assert [r["id"] for r in merged] == ["r0", "r1", "r2", "r3"]
    assert merged[1] is committed[1] and merged[0]["text"] == "new0"
    with pytest.raises(ValueError):
        merge_rows(retry.kept, new[:1])


def test_rows_of_other_records_are_refused() -> None:
    unit = next(cut_units(records(3), 3))
    with pytest.raises(ResumeConflictError, match="--restart"):
        retry_unit(unit, [row(0), row(2), row(1, "error")], "out")
    with pytest.raises(ResumeConflictError):
        retry_unit(unit, [row(0), row(1, "error")], "out")


def test_retry_takes_a_fixed_template_and_records_the_earlier_spec(store: OutputStore) -> None:
    store.commit("p.txt:1-3", [row(0), row(1, "error"), row(2)])
    fixed = identity(template="{{ text }}")
    with pytest.raises(ResumeConflictError, match="--retry-errors"):
        OutputStore(store.root).prepare("fp2", fixed, restart=False)
    again = OutputStore(store.root)
    assert again.prepare("fp2", fixed, restart=False, retry_errors=True) is True
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert manifest["fingerprint"] == "fp2" and manifest["identity"] == fixed
    assert manifest["earlier_specs"] == [identity(template="{{ txt }}")]
    assert again.is_committed("p.txt:1-3")  # the rows are kept
    again.record_plan([("p.txt:1-3", 3)])  # the plan keeps the history
    assert json.loads((store.root / "manifest.json").read_text())["earlier_specs"]
    # the new spec now resumes plainly
    assert OutputStore(store.root).prepare("fp2", fixed, restart=False) is True


@pytest.mark.parametrize(
    "changed",
    [
        {"unit_size": 4},
        {"input_files": {"p.txt": "d2"}},
        {"inputs": {"template": "{{ txt }}", "id_field": "key"}},
    ],
)
def test_retry_refuses_changes_to_the_records(store: OutputStore, changed: dict[str, Any]) -> None:
    store.commit("p.txt:1-3", [row(0), row(1, "error"), row(2)])
    other = identity(template="{{ txt }}") | changed
    with pytest.raises(ResumeConflictError, match="--restart"):
        OutputStore(store.root).prepare("fp3", other, restart=False, retry_errors=True)
    assert OutputStore(store.root).read_unit("p.txt:1-3")[1]["status"] == "error"
