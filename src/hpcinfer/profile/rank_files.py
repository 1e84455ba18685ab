"""Which ranks' trace files a run folder holds, and which of the plan's ranks are missing.

A run profiles every rank, so the folder must hold `kineto_trace_<rank>.json.gz` (or
`.json`) for ranks 0 .. world_size-1. Users' earlier tooling profiled only the driver
process and nothing said so; here a missing rank is named, with the raw traces that could
not be read (a corrupt gzip's rank is unknown: it is most likely the missing one's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.profile.trace_collect import UNREADABLE_DIR

KINETO = re.compile(r"^kineto_trace_(\d+)\.json(?:\.gz)?$")


@dataclass(frozen=True)
class RankCheck:
    world_size: int
    found: dict[int, Path]
    unreadable: tuple[Path, ...] = ()

    @property
    def missing(self) -> list[int]:
        return [rank for rank in range(self.world_size) if rank not in self.found]

    @property
    def extra(self) -> list[int]:
        """Ranks with a trace file that the plan does not have (a folder reused for a
        larger run)."""
        return sorted(rank for rank in self.found if rank >= self.world_size)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.extra

    def problem(self) -> str:
        """What is wrong, in words ('' when complete)."""
        parts = []
        if self.missing:
            names = ", ".join(f"kineto_trace_{r}.json.gz" for r in self.missing)
            parts.append(f"rank(s) {_ranks(self.missing)} have no trace ({names} missing)")
        if self.unreadable:
            names = ", ".join(f"{UNREADABLE_DIR}/{p.name}" for p in self.unreadable)
            parts.append(f"unreadable (corrupt) trace(s) kept aside: {names}")
        if self.extra:
            parts.append(
                f"rank(s) {_ranks(self.extra)} have traces but the plan has only "
                f"{self.world_size} rank(s)"
            )
        return "; ".join(parts)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def check_rank_files(run_dir: Path, world_size: int) -> RankCheck:
    found: dict[int, Path] = {}
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        match = KINETO.match(path.name)
        if match:
            found.setdefault(int(match.group(1)), path)
    aside = run_dir / UNREADABLE_DIR
    unreadable = tuple(sorted(aside.iterdir())) if aside.is_dir() else ()
    return RankCheck(world_size, found, unreadable)
