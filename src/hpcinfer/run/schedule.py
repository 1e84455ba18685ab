"""Which units a worker gets when it asks: the scheduling policy, free of processes and sockets.

The coordinator (real workers) and `bench/scale_sim.py` (simulated workers on a virtual
clock) drive the same `Scheduler`, so the policy measured at 24,576 workers is the one
that runs.

- dynamic (default): guided self-scheduling. A worker gets as many units as keep its engine
  full, but with other workers alive no more than half its even share of what is left, so
  the share shrinks as the job ends and a slow worker never holds the tail.
- static (Aurora-Inferencing's simple_test.py): every unit belongs to the worker numbered
  like its input file
  (`7.in` -> worker 7; other names: the file's position in the input list, modulo the
  workers). A unit whose owner died goes to whoever asks, so a crash never strands work.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterator
from typing import Literal

from hpcinfer.run.plan import WorkUnit

Policy = Literal["dynamic", "static"]


def grant_target(
    *,
    unassigned: int,
    alive: int,
    unit_size: int,
    max_inflight: int,
    batch: int = 0,
    held: int = 0,
) -> int:
    """Records a worker may hold: as many as keep its engine full, but with other workers
    alive no more than half its even share of what is left (guided self-scheduling), so the
    job's tail is spread over every worker. A lone worker has no one to balance with.

    Floor: a worker may always hold its even share of the outstanding records (`held` by
    workers, not yet committed, plus `unassigned`), up to a full engine `batch`. Without it a
    big job on many workers (10M records over 24,576 engines) kept engines at a sixth of
    their batch and ran 2.25x its ideal (bench/scale_sim.py); a small job (fewer records
    than batches) is still spread evenly instead of going to the first worker that asks."""
    share = unassigned if alive <= 1 else math.ceil(unassigned / (2 * alive))
    floor = min(batch, math.ceil((unassigned + held) / max(alive, 1)))
    return max(unit_size, min(max_inflight, max(share, floor)))


_NUMBERED = re.compile(r"(?:.*/)?(\d+)(?:\.[^/]*)?")


def static_owners(sources: list[str], workers: int) -> dict[str, int]:
    """Input file -> worker for the static policy: `{rank}.in` files go to that rank (as in
    Aurora-Inferencing's simple_test.py),
    any other naming to the file's position in the input list, modulo the workers."""
    numbers = [_NUMBERED.fullmatch(s) for s in sources]
    if all(numbers):
        return {s: int(m.group(1)) % workers for s, m in zip(sources, numbers, strict=True) if m}
    return {s: i % workers for i, s in enumerate(sources)}


class Scheduler:
    """Hands out units on request; takes back the units of a worker that died."""

    def __init__(
        self,
        units: Iterator[WorkUnit],
        unassigned_records: int,
        *,
        unit_size: int,
        max_inflight: int,
        owner_of: Callable[[WorkUnit], int] | None = None,
        batch: int = 0,
    ) -> None:
        self.units = units
        self.batch = batch  # the engine's max_num_seqs: see grant_target
        self.held = 0  # records granted and not yet committed
        self.last_target = 0  # the target of the last grant (a refused worker's re-ask level)
        self.unassigned = unassigned_records
        self.unit_size = unit_size
        self.max_inflight = max_inflight
        self.owner_of = owner_of  # None: dynamic; otherwise static ownership
        self.requeued: deque[WorkUnit] = deque()
        self.held_back: dict[int, deque[WorkUnit]] = {}  # static: read, waiting for their owner
        self.orphaned: set[int] = set()  # static: owners that died
        self.exhausted = False

    def grant(self, worker: int, inflight: int, alive: int) -> list[WorkUnit]:
        """Units for `worker`, which holds `inflight` records now, with `alive` workers."""
        if self.owner_of is not None:  # static: nothing to balance, keep the engine full
            target = self.max_inflight
        else:
            target = grant_target(
                unassigned=self.unassigned,
                alive=alive,
                unit_size=self.unit_size,
                max_inflight=self.max_inflight,
                batch=self.batch,
                held=self.held,
            )
        self.last_target = target
        granted: list[WorkUnit] = []
        held = inflight
        while held < target or (not granted and held == 0):
            unit = self._next_for(worker)
            if unit is None:
                break
            granted.append(unit)
            held += unit.size
            self.unassigned -= unit.size
            self.held += unit.size
        return granted

    def more_for(self, worker: int) -> bool:
        """Whether `worker` may get more units later (so it should keep asking)."""
        if self.requeued or not self.exhausted:
            return True
        if self.owner_of is None:
            return False
        return bool(self.held_back.get(worker)) or any(
            self.held_back.get(dead) for dead in self.orphaned
        )

    def committed(self, records: int) -> None:
        """A granted unit of `records` records is done."""
        self.held -= records

    def has_work(self) -> bool:
        """Records not yet handed out (read or unread; the plan says how many there are)."""
        return self.unassigned > 0

    def requeue(self, units: list[WorkUnit], owner_died: int | None = None) -> None:
        """Take back units a dead worker held; in static mode its own units become anyone's."""
        self.requeued.extend(units)
        self.unassigned += sum(u.size for u in units)
        self.held -= sum(u.size for u in units)
        if owner_died is not None and self.owner_of is not None:
            self.orphaned.add(owner_died)
            self.requeued.extend(self.held_back.pop(owner_died, ()))

    def _next_for(self, worker: int) -> WorkUnit | None:
        if self.requeued:
            return self.requeued.popleft()
        if self.owner_of is None:
            return self._read()
        own = self.held_back.get(worker)
        if own:
            return own.popleft()
        while (unit := self._read()) is not None:
            owner = self.owner_of(unit)
            if owner == worker or owner in self.orphaned:
                return unit
            self.held_back.setdefault(owner, deque()).append(unit)
        return None

    def _read(self) -> WorkUnit | None:
        if self.exhausted:
            return None
        unit = next(self.units, None)
        if unit is None:
            self.exhausted = True
        return unit
