"""Each vLLM worker's Kineto trace under the name of its rank.

vLLM's workers write `<name>.<ns>.pt.trace.json.gz` into the profiler folder (the name is
`rank<r>` or `dp<d>_pp<p>_tp<t>_..._rank<r>` depending on the version; a frontend may write
one too). The rank is read from the trace's own `distributedInfo`, never from the file name,
and only the head of the (gzip) stream is read: `distributedInfo` comes before
`traceEvents`, so a 500 MB trace costs a few kilobytes here. A trace without one (the
frontend's) is set aside, and so is a corrupt one (its rank cannot be read): the run still
writes profile.json, whose rank check then names the rank as missing. `profile.rank_files`
checks the ranks against the plan.
"""

from __future__ import annotations

import gzip
import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.traces.byte_streams import open_trace

TRACE_GLOB = "*.pt.trace.json*"
HEAD_CHUNK = 64 * 1024
HEAD_LIMIT = 16 * 1024 * 1024
"""How far into a trace distributedInfo is looked for (its pg_config can be long)."""
KEY = b'"distributedInfo"'
UNREADABLE_DIR = "unreadable_traces"
"""Where a raw trace that cannot be decompressed is kept, inside the run folder."""


def kineto_name(rank: int) -> str:
    return f"kineto_trace_{rank}.json.gz"


def trace_distributed_info(path: Path) -> dict[str, Any] | None:
    """A trace's `distributedInfo` (backend, rank, world_size, nccl_version, ...), read from
    the head of the stream; None when the trace has none (a frontend's trace, a process
    without torch.distributed) or is not a Kineto trace."""
    raw = b""
    tried = 0  # decode again only once the head has doubled: linear in its size
    with open_trace(path) as stream:
        while len(raw) <= HEAD_LIMIT:
            chunk = stream.read(HEAD_CHUNK)
            raw += chunk
            where = raw.find(KEY)
            if where < 0 and b'"traceEvents"' in raw:
                return None  # the events began: there is no distributedInfo before them
            if where >= 0 and (len(raw) >= 2 * tried or not chunk):
                tried = len(raw)
                info = _object_after(raw, where + len(KEY))
                if info is not None:
                    return info
            if not chunk:
                return None
    return None


def _object_after(raw: bytes, offset: int) -> dict[str, Any] | None:
    """The JSON object that starts after `offset` in `raw`; None while it is incomplete."""
    text = raw[offset:].decode("utf-8", errors="replace")
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def trace_rank(path: Path) -> int | None:
    """The rank in a trace's `distributedInfo`, or None (see trace_distributed_info)."""
    info = trace_distributed_info(path)
    rank = info.get("rank") if info else None
    return rank if isinstance(rank, int) and rank >= 0 else None


@dataclass
class CollectedTraces:
    """The per-rank traces now in the run folder, and what was not a rank's."""

    by_rank: dict[int, Path] = field(default_factory=dict)
    set_aside: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    """Corrupt traces (not gzip, or a damaged stream), moved to `UNREADABLE_DIR`."""
    notes: list[str] = field(default_factory=list)


def collect_traces(raw_dir: Path, out_dir: Path) -> CollectedTraces:
    """Move each rank's trace from `raw_dir` (vLLM's torch_profiler_dir) to
    `out_dir/kineto_trace_<rank>.json.gz`; traces without a rank stay in `raw_dir`."""
    collected = CollectedTraces()
    traces = sorted(raw_dir.glob(TRACE_GLOB), key=lambda p: p.stat().st_mtime)
    for trace in traces:
        try:
            rank = trace_rank(trace)
        except (zlib.error, OSError, EOFError) as exc:  # corrupt, not merely cut short
            kept = out_dir / UNREADABLE_DIR / trace.name
            kept.parent.mkdir(exist_ok=True)
            shutil.move(trace, kept)
            collected.unreadable.append(kept)
            collected.notes.append(
                f"{trace.name} cannot be read ({exc}): kept as {kept.relative_to(out_dir)}; "
                f"the rank that wrote it has no kineto_trace_<rank>.json.gz"
            )
            continue
        if rank is None:
            collected.set_aside.append(trace)
            collected.notes.append(
                f"{trace.name} has no distributedInfo (vLLM's frontend or not a worker): "
                f"left in {raw_dir}"
            )
            continue
        if rank in collected.by_rank:
            collected.notes.append(f"two traces say rank {rank}; kept the newer, {trace.name}")
        target = out_dir / kineto_name(rank)
        with trace.open("rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        if gzipped:
            shutil.move(trace, target)
        else:
            with trace.open("rb") as src, gzip.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()
        collected.by_rank[rank] = target
    return collected
