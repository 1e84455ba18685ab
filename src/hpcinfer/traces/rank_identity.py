"""Which rank a trace belongs to: `distributedInfo` says; the file name only when it lacks it.

vLLM names worker traces `dp0_pp0_tp1_dcp0_ep0_rank1.<ns>.pt.trace.json.gz` and the
frontend may write a trace too, so a name is a hint, never the authority (Holistic Trace
Analysis reads the rank with a regex over the text, which a name or an argument can fool).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAME_PATTERNS = (re.compile(r"rank[_-]?(\d+)"), re.compile(r"[_-](\d+)(?:\.pt\.trace)?\.json"))


@dataclass(frozen=True)
class RankIdentity:
    rank: int | None
    world_size: int | None
    source: str  # "distributedInfo", "file name" or "unknown"
    note: str | None = None


def identify(path: Path, distributed_info: dict[str, Any] | None) -> RankIdentity:
    """The rank and world size of the trace at `path`."""
    info = distributed_info or {}
    rank, world = info.get("rank"), info.get("world_size")
    if isinstance(rank, int) and not isinstance(rank, bool):
        return RankIdentity(rank, world if isinstance(world, int) else None, "distributedInfo")
    for pattern in _NAME_PATTERNS:
        found = pattern.findall(path.name)
        if found:
            return RankIdentity(
                int(found[-1]),
                None,
                "file name",
                f"no rank in distributedInfo: rank {found[-1]} read from the file name",
            )
    return RankIdentity(None, None, "unknown", "no rank in distributedInfo or the file name")
