"""Sets of time intervals: union, and how much of a set falls inside each of many windows.

Communication overhead is the length of the *union* of communication intervals in a step,
never the sum of their durations (overlapping kernels on several streams would count twice).
Intersections and differences follow from unions: |A and B| = |A| + |B| - |A or B|, and
|A minus B| = |A or B| - |B|, so one union routine and one windowed measure are all we need.
"""

from __future__ import annotations

from array import array

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]


class IntervalSet:
    """Disjoint, sorted intervals [starts[i], ends[i]) built from any overlapping ones."""

    __slots__ = ("_cumulative", "ends", "starts")

    def __init__(self, starts: Floats, ends: Floats) -> None:
        self.starts, self.ends = _merge(starts, ends)
        lengths = self.ends - self.starts
        self._cumulative = np.concatenate(([0.0], np.cumsum(lengths)))

    @classmethod
    def of(cls, *parts: tuple[array[float] | Floats, array[float] | Floats]) -> IntervalSet:
        """The union of every (starts, ends) pair given."""
        empty: list[Floats] = [np.empty(0)]
        starts = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in parts] or empty)
        ends = np.concatenate([np.asarray(e, dtype=np.float64) for _, e in parts] or empty)
        return cls(starts, ends)

    def __or__(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet.of((self.starts, self.ends), (other.starts, other.ends))

    @property
    def total(self) -> float:
        return float(self._cumulative[-1])

    def covered_before(self, points: Floats) -> Floats:
        """For each point x, the length of this set that lies before x."""
        if len(self.starts) == 0:
            return np.zeros_like(points)
        index = np.searchsorted(self.starts, points, side="left")  # intervals starting before x
        last = np.maximum(index - 1, 0)
        partial = np.clip(points - self.starts[last], 0.0, self.ends[last] - self.starts[last])
        return np.where(index > 0, self._cumulative[last] + partial, 0.0)

    def within(self, window_starts: Floats, window_ends: Floats) -> Floats:
        """The length of this set inside each window [window_starts[i], window_ends[i])."""
        return self.covered_before(window_ends) - self.covered_before(window_starts)


def _merge(starts: Floats, ends: Floats) -> tuple[Floats, Floats]:
    """Merge overlapping or touching intervals; empty and inverted ones are dropped."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)  # furthest end seen so far
    new_run = np.empty(len(starts), dtype=bool)
    new_run[0] = True
    new_run[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new_run)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return starts[first], reach[last]


def overlap(a: IntervalSet, b: IntervalSet, union: IntervalSet, ws: Floats, we: Floats) -> Floats:
    """|a and b| inside each window, given `union` = a | b."""
    return a.within(ws, we) + b.within(ws, we) - union.within(ws, we)
