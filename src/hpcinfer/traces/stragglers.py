"""Who holds the others back: the k-th call of one collective type in one process group is
the same collective on every rank of the group, so its start times say who arrived last and
how long the others waited.

A rank that arrives late at a collective shows *less* time in it than the others (they wait
inside the call for it), so comm time alone points at the wrong rank; arrival order does not.
Skew of rank r at a call = its start - the median start. Calls are matched per process group
(`args["Process Group Name"]`, which torch records on NCCL kernels and `record_param_comms`)
and per type: with PP > 1 the stages run different collectives, and matching call k of every
rank would compare unrelated calls. Where the trace names no group (CPU shm and gloo
operators) calls are matched per type only, and only when every rank ran the same number of
each type; otherwise no straggler is named, and a note says why.

The straggler is the rank that arrives last more often than chance allows: at least
MIN_CALLS matched calls, a one-sided binomial test against 1/(ranks in the call) at
p < MAX_P_VALUE, and a mean wait of the others of at least MIN_WAIT_US a call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_CALLS = 20
MAX_P_VALUE = 0.01
MIN_WAIT_US = 2.0

CallTuple = tuple[float, float, str, int, str]  # start us, duration us, op, step, group
"""One collective call of a rank; group is "" where the trace does not name it."""


@dataclass
class Arrivals:
    """Per-rank arrival figures and the straggler (rank, by position in `ranks`)."""

    matched: int = 0
    straggler: int | None = None
    straggler_wait_ms: float = 0.0
    straggler_last_share: float = 0.0
    straggler_p_value: float = 1.0
    skew_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)
    last_arrivals: list[int] = field(default_factory=list)
    rows: Iterable[dict[str, Any]] = ()  # the matched calls, for the CSV (read once)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Stream:
    """The calls of one (group, type) that every participant made, matched k-th to k-th."""

    group: str
    op: str
    members: list[int]  # positions in `ranks`
    calls: list[list[CallTuple]]  # per member, the same length


def match_collectives(ranks: Sequence[int], calls: Sequence[Sequence[CallTuple]]) -> Arrivals:
    """Match the calls of every rank (in start order, one list per rank)."""
    size = len(ranks)
    found = Arrivals(skew_ms=[0.0] * size, wait_ms=[0.0] * size, last_arrivals=[0] * size)
    if size < 2:
        return found
    streams = _streams(ranks, calls, found.notes)
    skew_sum = np.zeros(size)
    skew_n = np.zeros(size)
    wait = np.zeros(size)
    last_count = np.zeros(size, dtype=np.int64)
    taken = np.zeros(size, dtype=np.int64)  # matched calls each rank took part in
    chance = np.zeros(size)  # the largest 1/(members) among them: a conservative null
    waited_for = np.zeros(size)  # others' wait at the calls the rank arrived last at
    waiters = np.zeros(size)  # (other rank, call) pairs behind waited_for
    matrices = []
    for stream in streams:
        members = np.array(stream.members)
        start = np.array([[c[0] for c in member] for member in stream.calls])
        median = np.median(start, axis=0)
        ordered = np.sort(start, axis=0)
        last = np.where(ordered[-1] > ordered[-2], start.argmax(axis=0), -1)
        waits = start.max(axis=0) - start
        skew_sum[members] += (start - median).sum(axis=1)
        skew_n[members] += start.shape[1]
        wait[members] += waits.sum(axis=1)
        taken[members] += start.shape[1]
        chance[members] = np.maximum(chance[members], 1.0 / len(members))
        for local, member in enumerate(members):
            mine = last == local
            last_count[member] += int(mine.sum())
            waited_for[member] += float(waits[:, mine].sum())
            waiters[member] += float(mine.sum()) * (len(members) - 1)
        found.matched += start.shape[1]
        matrices.append((stream, start, median, waits, last))
    found.skew_ms = [
        round(float(s / n) / 1000, 6) if n else 0.0 for s, n in zip(skew_sum, skew_n, strict=True)
    ]
    found.wait_ms = [round(float(v) / 1000, 6) for v in wait]
    found.last_arrivals = [int(v) for v in last_count]
    found.rows = _rows(ranks, matrices)
    if not found.matched:
        return found
    top = int(np.argmax(last_count))
    share = last_count[top] / taken[top] if taken[top] else 0.0
    found.straggler_last_share = round(float(share), 4)
    found.straggler_p_value = _binomial_tail(int(last_count[top]), int(taken[top]), chance[top])
    mean_wait = waited_for[top] / waiters[top] if waiters[top] else 0.0
    if (
        taken[top] >= MIN_CALLS
        and found.straggler_p_value < MAX_P_VALUE
        and mean_wait >= MIN_WAIT_US
    ):
        found.straggler = ranks[top]
        found.straggler_wait_ms = round(float(waited_for[top]) / 1000, 6)
    return found


def _streams(
    ranks: Sequence[int], calls: Sequence[Sequence[CallTuple]], notes: list[str]
) -> list[_Stream]:
    """The matchable calls, per (group, type); `notes` says what could not be matched."""
    buckets: dict[tuple[str, str], dict[int, list[CallTuple]]] = {}
    for i, rank_calls in enumerate(calls):
        for call in rank_calls:
            buckets.setdefault((call[4], call[2]), {}).setdefault(i, []).append(call)
    ungrouped = [Counter(c[2] for c in rank_calls if not c[4]) for rank_calls in calls]
    ungrouped_ok = all(u == ungrouped[0] for u in ungrouped)
    if not ungrouped_ok:
        shown = "; ".join(
            f"rank {r}: " + (", ".join(f"{op} {n}" for op, n in sorted(u.items())) or "none")
            for r, u in zip(ranks, ungrouped, strict=True)
        )
        notes.append(
            "the traces do not say which process group each collective belongs to, and the "
            f"ranks ran different collectives ({shown}): those calls cannot be matched across "
            "ranks, so no straggler is named from them"
        )
    streams = []
    for (group, op), by_rank in sorted(buckets.items()):
        if not group and not ungrouped_ok:
            continue
        members = sorted(by_rank)
        if len(members) < 2:
            continue
        counts = [len(by_rank[i]) for i in members]
        n = min(counts)
        if len(set(counts)) > 1:
            where = f"process group {group}" if group else "the analysed steps"
            each = ", ".join(
                f"rank {ranks[i]}: {c}" for i, c in zip(members, counts, strict=True)
            )
            notes.append(
                f"ranks made different numbers of {op} calls in {where} ({each}); "
                f"the first {n} are matched"
            )
        streams.append(_Stream(group, op, members, [by_rank[i][:n] for i in members]))
    return streams


def _binomial_tail(hits: int, trials: int, chance: float) -> float:
    """P(X >= hits) for X ~ Binomial(trials, chance): how likely arriving last this often
    is when every rank is equally likely to be last."""
    if trials == 0 or hits <= trials * chance:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    total = 0.0
    for k in range(hits, trials + 1):  # terms fall from `hits` on (hits is above the mean)
        term = math.exp(
            math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
            + k * log_p + (trials - k) * log_q
        )
        total += term
        if term < total * 1e-16:
            break
    return float(f"{min(total, 1.0):.3g}")


def _rows(ranks: Sequence[int], matrices: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    """One CSV row per rank and matched call, made as the file is written (a dict per row
    for every call of a long trace would cost hundreds of MB)."""
    call = 0
    for stream, start, median, wait, last in matrices:
        first = start.min(axis=0)
        for k in range(start.shape[1]):
            for local, member in enumerate(stream.members):
                made = stream.calls[local][k]
                yield {
                    "call": call,
                    "step": made[3],
                    "op": stream.op,
                    "group": stream.group,
                    "rank": ranks[member],
                    "arrival_us": round(float(start[local, k] - first[k]), 3),
                    "skew_us": round(float(start[local, k] - median[k]), 3),
                    "wait_us": round(float(wait[local, k]), 3),
                    "duration_us": round(float(made[1]), 3),
                    "last": bool(last[k] == local),
                }
            call += 1
