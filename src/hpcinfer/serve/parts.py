"""Across nodes: every serve rank writes its part of the registry, rank 0 merges them.

No messages between ranks (srun and ssh ranks may have no MPI): the parts directory on the
shared file system is the whole protocol. Rank 0 merges whenever a part changes. Parts an
earlier launch left behind (one that was killed before it could clean up) are removed when
rank 0 starts; a rank of this launch whose part went with them writes it again
(`Fleet.rewrite_if_missing`). At shutdown rank 0 waits a bounded time for every rank's part
to show its servers stopped, merges a last time and removes the parts.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from hpcinfer.core.endpoints_registry import (
    LIVE_STATES,
    Endpoint,
    merge_parts,
    parts_dir,
    read_parts,
)

FINAL_WAIT_S = 45.0


def _signature(registry: Path) -> tuple[tuple[str, int, int], ...]:
    found = []
    for part in sorted(parts_dir(registry).glob("*.json")):
        with contextlib.suppress(OSError):
            stat = part.stat()
            found.append((part.name, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class PartsMerger:
    """Rank 0's side: keep the registry the merge of every rank's current part."""

    def __init__(self, registry: Path, world_size: int) -> None:
        self.registry = registry
        self.world_size = world_size
        self._seen: tuple[tuple[str, int, int], ...] = ()

    def remove_stale(self, started_at: float) -> None:
        """Remove parts written before this launch started (an earlier, killed launch's)."""
        for part in parts_dir(self.registry).glob("*.json"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < started_at:
                    part.unlink()

    def merge_if_changed(self) -> list[Endpoint] | None:
        signature = _signature(self.registry)
        if signature == self._seen:
            return None
        self._seen = signature
        return merge_parts(self.registry)

    def ranks_settled(self) -> bool:
        """Every rank has a part, and none of its servers is still live."""
        entries = read_parts(self.registry)
        ranks = {e.rank for e in entries}
        live = [e for e in entries if e.state in LIVE_STATES]
        return len(ranks) >= self.world_size and not live

    def finish(self, wait_s: float | None = None) -> list[Endpoint]:
        """Wait (bounded) for every rank to stop its servers, merge, remove the parts."""
        deadline = time.monotonic() + (FINAL_WAIT_S if wait_s is None else wait_s)
        while time.monotonic() < deadline and not self.ranks_settled():
            time.sleep(0.3)
        merged = merge_parts(self.registry)
        shutil.rmtree(parts_dir(self.registry), ignore_errors=True)
        return merged
