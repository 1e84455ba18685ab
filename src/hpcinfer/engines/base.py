"""The Engine protocol: what a worker needs from any inference backend.

Streaming by design: a worker submits records as work units arrive and polls for finished
results, so the next unit's requests are queued before the current one drains and the
engine's continuous batching never runs dry at unit boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hpcinfer.records import Record, Result


class Engine(Protocol):
    model_name: str

    def submit(self, records: Sequence[Record]) -> list[Result]:
        """Queue records; return at once the results of those rejected before generation."""
        ...

    def poll(self) -> list[Result]:
        """Advance the engine one step; return the results that finished."""
        ...

    def inflight(self) -> int:
        """Records submitted and not yet returned by poll()."""
        ...

    def close(self) -> None: ...
