"""The typed result of `analyze_traces`: `analysis.json`, read by summary, report and card.

Times are milliseconds; per-rank `*_ms` figures are means per analysed step, `total_*_ms`
sums over them. Percentages are of the step wall time, except `overlap_pct` (of comm time).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileQuality(_Model):
    """What was wrong with one trace file, and what was done about it."""

    truncated: bool = False
    huge_ints: int = 0
    invalid_utf8: int = 0
    events_read: int = 0
    events_skipped: int = 0
    notes: list[str] = Field(default_factory=list)
    missing_ranks: list[int] = Field(default_factory=list)  # of distributedInfo's world_size


class StepKinds(_Model):
    prefill: int = 0
    decode: int = 0
    mixed: int = 0
    unknown: int = 0


class TopOp(_Model):
    """A kernel (device traces) or CPU operator (CPU traces) by the time it took."""

    name: str
    calls: int
    total_ms: float
    mean_us: float


class RankAnalysis(_Model):
    """One rank's figures over its analysed steps (first and last dropped)."""

    rank: int
    world_size: int
    file: str
    rank_source: str  # distributedInfo, or "file name" when the trace lacks it
    timeline: str  # "device" (kernels are the work) or "cpu" (CPU operators are)
    steps: int
    step_kinds: StepKinds
    step_ms: float
    comm_ms: float
    compute_ms: float
    memcpy_ms: float
    exposed_comm_ms: float
    overlap_ms: float
    idle_ms: float
    comm_overhead_pct: float
    exposed_comm_pct: float
    overlap_pct: float
    total_step_ms: float
    total_comm_ms: float
    total_compute_ms: float
    total_memcpy_ms: float
    total_idle_ms: float
    collectives: dict[str, int]
    collectives_per_step: dict[str, float]
    collective_libraries: dict[str, int]
    arrival_skew_ms: float = 0.0  # mean of (its arrival - the median arrival) per collective
    wait_ms: float = 0.0  # total time it waited for the last rank to arrive
    last_arrivals: int = 0  # collectives it arrived at last
    top_ops: list[TopOp]


class TraceAnalysis(_Model):
    """`analysis.json`: every rank of one trace folder, and who held the others back."""

    trace_dir: str
    ranks: list[RankAnalysis]
    straggler: int | None
    straggler_wait_ms: float
    straggler_last_share: float  # share of its matched collectives the last-arriving rank
    # arrived last at (the straggler's, where one is named)
    straggler_p_value: float = 1.0  # chance of arriving last that often if all were alike
    matched_collectives: int
    collective_table_version: str
    unknown_comm_share: float  # of communication-like calls, the share the table did not know
    unknown_comm_names: list[str]
    data_quality: dict[str, FileQuality]  # file name -> what reading it found
    notes: list[str] = Field(default_factory=list)
    missing_ranks: list[int] = Field(default_factory=list)  # of distributedInfo's world_size
