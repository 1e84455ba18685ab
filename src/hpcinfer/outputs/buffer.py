"""Node-local commit buffer (`output.local_dir`): commit fast, move to the shared store after.

The Aurora vLLM server scripts wrote results to /dev/shm and tarred them to the shared file
system at the end: a
node that died before the tar lost everything, and every node left one archive. Here a
worker commits each unit to a node-local directory (quick, whatever the shared file system
is doing), and a mover thread copies it into the shared store's `units/` as a unit file of
its own (temp name, fsync, rename), deletes the local copy, and only then reports the unit
committed. A unit left in the buffer by a killed worker is moved by the next worker that
starts on that node with the same output directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpcinfer.outputs.atomic import atomic_writer
from hpcinfer.outputs.store import OutputStore, unit_file_name


def buffer_root(local_dir: Path, shared_root: Path) -> Path:
    """One buffer per output directory, so jobs sharing a node never mix their units."""
    tag = hashlib.sha256(str(shared_root.resolve()).encode()).hexdigest()[:16]
    return local_dir / f"hpcinfer-{tag}"


class UnitMover:
    """Commits units locally and moves them to the shared store on a background thread."""

    def __init__(
        self, local_dir: Path, shared: OutputStore, on_moved: Callable[[str], None]
    ) -> None:
        self.shared = shared
        self.local = OutputStore(buffer_root(local_dir, shared.root))
        self.local.units_dir.mkdir(parents=True, exist_ok=True)
        self.on_moved = on_moved
        self.error: BaseException | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="unit-mover", daemon=True)
        self._thread.start()

    def commit(self, unit_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write the unit to the node-local buffer and queue its move."""
        if self.error is not None:
            raise RuntimeError(f"moving units to {self.shared.units_dir} failed: {self.error}")
        self.local.commit(unit_id, rows)
        self._queue.put(unit_id)

    def move_leftovers(self) -> list[str]:
        """Move units a killed worker left in this node's buffer (synchronously, at start)."""
        moved = []
        for path in sorted(self.local.units_dir.glob("*.jsonl")):
            with contextlib.suppress(FileNotFoundError):  # another worker took it
                self._move_file(path)
                moved.append(path.name)
        return moved

    def close(self) -> None:
        """Wait until every queued unit is in the shared store."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"moving units to {self.shared.units_dir} failed: {self.error}")

    def _run(self) -> None:
        while (unit_id := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self._move_file(self.local.units_dir / unit_file_name(unit_id))
                self.on_moved(unit_id)
            except BaseException as exc:  # reported by the next commit() or close()
                self.error = exc

    def _move_file(self, path: Path) -> None:
        with open(path, "rb") as src, atomic_writer(self.shared.units_dir / path.name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        path.unlink()
