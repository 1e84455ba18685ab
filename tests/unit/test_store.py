"""The output store: atomic unit commits, ordered reads, resume and --restart."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.errors import ResumeConflictError
from hpcinfer.outputs.atomic import atomic_writer, write_text_atomic
from hpcinfer.outputs.store import OutputStore, unit_file_name


def rows(unit: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{unit}-{i}", "status": "ok", "text": f"t{i}"} for i in range(n)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    s = OutputStore(tmp_path / "out")
    assert s.prepare("fp", {"model": "m"}, restart=False) is False
    return s


def test_commit_then_read_unit(store: OutputStore) -> None:
    store.commit("a.txt:1-3", rows("a", 3))
    assert store.is_committed("a.txt:1-3")
    assert store.read_unit("a.txt:1-3") == rows("a", 3)
    assert store.committed() == {unit_file_name("a.txt:1-3")}


def test_unicode_rows_round_trip(store: OutputStore) -> None:
    row = {"id": "x", "text": "héllo ✓ 日本\nline two"}
    store.commit("u", [row])
    assert store.read_unit("u") == [row]


def test_iter_rows_follows_the_given_order_and_skips_uncommitted(store: OutputStore) -> None:
    store.commit("u2", rows("b", 2))
    store.commit("u0", rows("a", 1))
    order = ["u0", "missing", "u2"]
    assert list(store.iter_rows(order)) == rows("a", 1) + rows("b", 2)
    assert list(store.iter_rows(["u2", "u0"])) == rows("b", 2) + rows("a", 1)
    assert list(store.iter_rows(["missing"])) == []


def test_recommit_replaces_the_unit_whole(store: OutputStore) -> None:
    store.commit("u", rows("a", 5))
    store.commit("u", rows("b", 2))
    assert store.read_unit("u") == rows("b", 2)


def test_unit_file_names_are_distinct_and_safe() -> None:
    names = {unit_file_name(f"/abs/dir:x/{i}.in:1-32") for i in range(50)}
    assert len(names) == 50
    assert all("/" not in n and ":" not in n and n.endswith(".jsonl") for n in names)


def test_interrupted_commit_leaves_no_unit_and_no_temp_file(store: OutputStore) -> None:
    def exploding() -> Iterator[dict[str, Any]]:
        yield {"id": "first"}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        store.commit("u", exploding())
    assert not store.is_committed("u")
    assert store.committed() == set()
    assert list(store.units_dir.iterdir()) == []
    assert list(store.iter_rows(["u"])) == []


def test_interrupted_recommit_keeps_the_earlier_unit(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))

    def exploding() -> Iterator[dict[str, Any]]:
        yield {"id": "new"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.commit("u", exploding())
    assert store.read_unit("u") == rows("a", 2)
    assert leftovers(store.units_dir) == []


def test_committed_ignores_temp_files_of_interrupted_commits(store: OutputStore) -> None:
    (store.units_dir / ".abc.jsonl.123.tmp").write_text('{"id": 1}\n')
    assert store.committed() == set()


def test_atomic_writer_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    write_text_atomic(target, "old")
    with pytest.raises(ValueError), atomic_writer(target) as handle:
        handle.write("half")
        raise ValueError
    assert target.read_text() == "old"
    assert leftovers(target.parent) == []


def test_atomic_files_are_shared_as_a_plain_write_would_be_unless_private(
    tmp_path: Path,
) -> None:
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "results.json", "{}")
        write_text_atomic(tmp_path / "key.json", "{}", private=True)
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "key.json").stat().st_mode & 0o777 == 0o600


# -- prepare / resume -------------------------------------------------------------------------


def test_prepare_fresh_dir_creates_layout_and_manifest(tmp_path: Path) -> None:
    s = OutputStore(tmp_path / "new" / "out")
    assert s.prepare("fp1", {"model": "m"}, restart=False) is False
    assert s.units_dir.is_dir() and s.logs_dir.is_dir()
    manifest = json.loads((s.root / "manifest.json").read_text())
    assert manifest["fingerprint"] == "fp1"
    assert manifest["identity"] == {"model": "m"}


def test_prepare_same_fingerprint_resumes_and_keeps_units(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))
    again = OutputStore(store.root)
    assert again.prepare("fp", {"model": "m"}, restart=False) is True
    assert again.read_unit("u") == rows("a", 2)


def test_prepare_different_fingerprint_refuses_naming_the_change(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))
    with pytest.raises(ResumeConflictError) as info:
        OutputStore(store.root).prepare("fp2", {"model": "other"}, restart=False)
    message = str(info.value)
    assert "--restart" in message
    assert str(store.root) in message
    assert 'model: "m" -> "other"' in message
    # nothing was touched
    assert store.read_unit("u") == rows("a", 2)
    assert json.loads((store.root / "manifest.json").read_text())["fingerprint"] == "fp"


def test_prepare_conflict_without_identity_difference_still_explains(store: OutputStore) -> None:
    store.commit("u", rows("a", 1))
    with pytest.raises(ResumeConflictError, match="fingerprint differs"):
        store.prepare("fp2", {"model": "m"}, restart=False)


def test_prepare_restart_clears_units_and_exports(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))
    for name in ("results.jsonl", "results.parquet", "run.json"):
        (store.root / name).write_text("old")
    (store.root / "text").mkdir()
    (store.root / "text" / "0.out").write_text("old")
    resumed = store.prepare("fp2", {"model": "other"}, restart=True)
    assert resumed is False
    assert store.committed() == set()
    assert not store.is_committed("u")
    for name in ("results.jsonl", "results.parquet", "run.json", "text"):
        assert not (store.root / name).exists()
    assert store.units_dir.is_dir()
    assert json.loads((store.root / "manifest.json").read_text())["fingerprint"] == "fp2"


def test_restart_with_same_fingerprint_also_starts_afresh(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))
    assert store.prepare("fp", {"model": "m"}, restart=True) is False
    assert store.committed() == set()


def test_corrupt_manifest_is_a_resume_conflict_mentioning_restart(store: OutputStore) -> None:
    store.commit("u", rows("a", 1))
    (store.root / "manifest.json").write_text("{not json")
    with pytest.raises(ResumeConflictError) as info:
        OutputStore(store.root).prepare("fp", {"model": "m"}, restart=False)
    assert "--restart" in str(info.value)
    assert "manifest.json" in str(info.value)


def test_restart_recovers_from_a_corrupt_manifest(store: OutputStore) -> None:
    store.commit("u", rows("a", 2))
    (store.root / "manifest.json").write_text("{not json")
    assert OutputStore(store.root).prepare("fp", {"model": "m"}, restart=True) is False
    assert store.committed() == set()


def test_log_path_is_per_worker(store: OutputStore) -> None:
    assert store.log_path(3) == store.logs_dir / "worker-3.log"
    assert store.log_path(0) != store.log_path(1)


def test_prepare_removes_temp_files_of_commits_cut_short(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    store.prepare("fp", {}, restart=False)
    stale = store.units_dir / ".abc.jsonl.x1y2.tmp"
    stale.write_text('{"id": "half"', encoding="utf-8")
    assert store.prepare("fp", {}, restart=False) is True
    assert not stale.exists()


def test_a_second_run_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = OutputStore(out)
    holder.lock()  # held by this process while `holder` lives
    code = (
        "import sys; from pathlib import Path; from hpcinfer.outputs.store import OutputStore\n"
        "try:\n    OutputStore(Path(sys.argv[1])).lock()\n"
        "except Exception as exc:\n    print(exc); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.returncode == 3
    assert "in use by another hpcinfer run" in proc.stdout and "pid" in proc.stdout
    del holder


def test_recorded_plan_tells_a_resume_how_many_units_are_left(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    assert store.prepare("fp", {"model": None}, restart=False) is False
    assert store.units_left() is None  # no plan recorded yet
    store.record_plan([("a.in:1-2", 2), ("a.in:3-4", 2)])
    manifest = store.read_manifest() or {}
    assert manifest["fingerprint"] == "fp" and manifest["identity"] == {"model": None}
    assert store.units_left() == 2
    store.commit("a.in:1-2", [{"id": "a"}, {"id": "b"}])
    assert OutputStore(tmp_path / "out").units_left() == 1


def test_a_directory_without_committed_units_takes_any_spec(store: OutputStore) -> None:
    """A run that failed before its first commit (bad model path) leaves a manifest but no
    results: the fixed rerun, a different spec, is accepted without --restart."""
    (store.root / "results.jsonl").write_text("")
    again = OutputStore(store.root)
    assert again.prepare("fp2", {"model": "fixed"}, restart=False) is False
    assert json.loads((store.root / "manifest.json").read_text())["fingerprint"] == "fp2"
    assert not (store.root / "results.jsonl").exists()


def test_a_corrupt_manifest_without_committed_units_is_replaced(store: OutputStore) -> None:
    (store.root / "manifest.json").write_text("{not json")
    assert OutputStore(store.root).prepare("fp", {"model": "m"}, restart=False) is False
    assert json.loads((store.root / "manifest.json").read_text())["fingerprint"] == "fp"


def test_unlock_lets_the_next_run_in_this_process_have_the_directory(tmp_path: Path) -> None:
    first = OutputStore(tmp_path / "out")
    first.lock()
    first.unlock()
    second = OutputStore(tmp_path / "out")
    second.lock()  # no "in use by another hpcinfer run", although `first` still exists
    second.unlock()
