"""Who holds the others back: the k-th collective call of every rank is the same collective,
so its start times say who arrived last and how long the others waited.

A rank that arrives late at a collective shows *less* time in it than the others (they wait
inside the call for it), so comm time alone points at the wrong rank; arrival order does not.
Skew of rank r at call k = its start - the median start; the straggler is the rank that
arrives last at most of the calls (more than STRAGGLER_SHARE of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRAGGLER_SHARE = 0.6
MIN_CALLS = 3


@dataclass
class Arrivals:
    """Per-rank arrival figures and the straggler (rank, by position in `ranks`)."""

    matched: int = 0
    straggler: int | None = None
    straggler_wait_ms: float = 0.0
    straggler_last_share: float = 0.0
    skew_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)
    last_arrivals: list[int] = field(default_factory=list)
    rows: Iterable[dict[str, Any]] = ()  # the matched calls, for the CSV (read once)
    notes: list[str] = field(default_factory=list)


def match_collectives(
    ranks: Sequence[int], calls: Sequence[Sequence[tuple[float, float, str, int]]]
) -> Arrivals:
    """Match call k of every rank (calls in start order, one list per rank)."""
    found = Arrivals(
        skew_ms=[0.0] * len(ranks), wait_ms=[0.0] * len(ranks), last_arrivals=[0] * len(ranks)
    )
    if len(ranks) < 2:
        return found
    counts = [len(c) for c in calls]
    n = min(counts)
    if len(set(counts)) > 1:
        found.notes.append(
            "ranks made different numbers of collective calls in the analysed steps "
            f"({', '.join(f'rank {r}: {c}' for r, c in zip(ranks, counts, strict=True))}); "
            f"the first {n} are matched"
        )
    if n == 0:
        return found
    ops = [[call[2] for call in rank_calls[:n]] for rank_calls in calls]
    differing = sum(len({ops[r][k] for r in range(len(ranks))}) > 1 for k in range(n))
    if differing:
        found.notes.append(
            f"{differing} of {n} matched calls are of different types on different ranks: "
            "the ranks did not run the same collectives in the same order"
        )
    start = np.array([[call[0] for call in rank_calls[:n]] for rank_calls in calls])
    duration = np.array([[call[1] for call in rank_calls[:n]] for rank_calls in calls])
    median = np.median(start, axis=0)
    latest = start.max(axis=0)
    ordered = np.sort(start, axis=0)
    # the rank that arrived last; -1 where two or more arrived together last
    last = np.where(ordered[-1] > ordered[-2], start.argmax(axis=0), -1)
    wait = latest - start  # how long each rank waited for the last one, per call
    found.matched = n
    found.skew_ms = [round(float(v) / 1000, 6) for v in (start - median).mean(axis=1)]
    found.wait_ms = [round(float(v) / 1000, 6) for v in wait.sum(axis=1)]
    found.last_arrivals = [int(v) for v in np.bincount(last[last >= 0], minlength=len(ranks))]
    top = int(np.argmax(found.last_arrivals))
    share = found.last_arrivals[top] / n
    found.straggler_last_share = round(share, 4)
    if n >= MIN_CALLS and share > STRAGGLER_SHARE and float(wait.sum()) > 0:
        found.straggler = ranks[top]
        waited = wait[:, last == top].sum()
        found.straggler_wait_ms = round(float(waited) / 1000, 6)
    found.rows = _rows(ranks, calls, ops, start, median, wait, duration, last)
    return found


def _rows(
    ranks: Sequence[int],
    calls: Sequence[Sequence[tuple[float, float, str, int]]],
    ops: list[list[str]],
    start: Any,
    median: Any,
    wait: Any,
    duration: Any,
    last: Any,
) -> Iterator[dict[str, Any]]:
    """One CSV row per rank and matched call, made as the file is written (a dict per row
    for every call of a long trace would cost hundreds of MB)."""
    first = start.min(axis=0)
    for k in range(start.shape[1]):
        for r, rank in enumerate(ranks):
            yield {
                "call": k,
                "step": calls[r][k][3],
                "op": ops[r][k],
                "rank": rank,
                "arrival_us": round(float(start[r, k] - first[k]), 3),
                "skew_us": round(float(start[r, k] - median[k]), 3),
                "wait_us": round(float(wait[r, k]), 3),
                "duration_us": round(float(duration[r, k]), 3),
                "last": bool(last[k] == r),
            }
