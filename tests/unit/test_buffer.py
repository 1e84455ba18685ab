"""Node-local commit buffer: units land in the shared store whole, and nothing is lost."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpcinfer.outputs.buffer import UnitMover, buffer_root
from hpcinfer.outputs.store import OutputStore, unit_file_name


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "status": "ok"} for i in range(n)]


def test_committed_units_move_to_the_shared_store(tmp_path: Path) -> None:
    shared = OutputStore(tmp_path / "shared")
    moved: list[str] = []
    mover = UnitMover(tmp_path / "local", shared, moved.append)
    mover.commit("a.txt:1-2", _rows(2))
    mover.commit("a.txt:3-4", _rows(2))
    mover.close()
    assert moved == ["a.txt:1-2", "a.txt:3-4"]
    assert shared.read_unit("a.txt:3-4") == _rows(2)
    local_units = buffer_root(tmp_path / "local", shared.root) / "units"
    assert list(local_units.iterdir()) == [], "moved units leave the buffer"
    assert not list(shared.units_dir.glob(".*tmp"))


def test_units_left_by_a_killed_worker_are_moved_at_start(tmp_path: Path) -> None:
    shared = OutputStore(tmp_path / "shared")
    left = OutputStore(buffer_root(tmp_path / "local", shared.root))
    left.commit("b.txt:1-3", _rows(3))  # committed locally, never moved (kill -9)
    mover = UnitMover(tmp_path / "local", shared, lambda _: None)
    assert mover.move_leftovers() == [unit_file_name("b.txt:1-3")]
    mover.close()
    assert shared.is_committed("b.txt:1-3")


def test_jobs_on_one_node_get_separate_buffers(tmp_path: Path) -> None:
    a = buffer_root(tmp_path, tmp_path / "job-a")
    b = buffer_root(tmp_path, tmp_path / "job-b")
    assert a != b and a.parent == b.parent == tmp_path


def test_a_failed_move_is_reported_not_lost(tmp_path: Path) -> None:
    shared = OutputStore(tmp_path / "shared")
    shared.units_dir.parent.mkdir(parents=True)
    shared.units_dir.write_text("not a directory")  # the shared store is broken
    done = threading.Event()
    mover = UnitMover(tmp_path / "local", shared, lambda _: done.set())
    mover.commit("c.txt:1-1", _rows(1))
    with pytest.raises(RuntimeError, match="moving units"):
        mover.close()
    assert not done.is_set()
    local = OutputStore(buffer_root(tmp_path / "local", shared.root))
    assert local.is_committed("c.txt:1-1"), "the unit stays in the buffer for a rerun"
