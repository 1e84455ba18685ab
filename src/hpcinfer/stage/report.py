"""What a stage did, for rank 0's one summary (text or JSON) and for scripts.

GB/s is bytes sent (one copy's worth; every node received them at once) over the whole
stage's wall time, listing and checks included: the rate a job script actually sees.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RankReport:
    """One rank's part: its folder, who wrote it, and what that copy needed."""

    rank: int
    host: str
    node: int
    copy: str
    writer: int  # the rank that wrote this rank's folder (itself, or a rank sharing it)
    verified: bool  # the copy was already staged and verified: skipped
    received: list[str] = field(default_factory=list)  # files this copy was sent
    problems: list[str] = field(default_factory=list)  # why recorded files were sent again


@dataclass(frozen=True)
class StageResult:
    rank: int  # the rank this result is from; only rank 0's has every rank's report
    model: str
    source: str
    layout: str
    to: str
    templated: bool  # --to had placeholders: each rank's paths differ from rank 0's
    run_model: str  # rank 0's --model for `hpcinfer run`
    run_env: dict[str, str]  # and the environment the run must have
    files: int
    links: int
    bytes_total: int
    bytes_sent: int
    seconds: float
    broadcast_seconds: float
    chunk_mib: int
    ranks: int
    reports: list[RankReport]

    @property
    def writers(self) -> list[RankReport]:
        return [r for r in self.reports if r.writer == r.rank]

    @property
    def copies(self) -> int:
        return len(self.writers)

    @property
    def copies_skipped(self) -> int:
        return sum(1 for r in self.writers if r.verified)

    @property
    def status(self) -> str:
        """'skipped' when every copy was already staged and verified, else 'staged'."""
        return "skipped" if self.copies_skipped == self.copies else "staged"

    @property
    def gb_per_s(self) -> float:
        return self.bytes_sent / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def run_command(self) -> list[str]:
        """The lines a job script needs to run on the staged copy."""
        lines = []
        if self.run_env:
            pairs = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.run_env.items())
            lines.append(f"export {pairs}")
        lines.append(f"hpcinfer run INPUTS --model {shlex.quote(self.run_model)}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "model": self.model,
            "source": self.source,
            "layout": self.layout,
            "to": self.to,
            "files": self.files,
            "links": self.links,
            "bytes": self.bytes_total,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "broadcast_seconds": round(self.broadcast_seconds, 3),
            "gb_per_s": round(self.gb_per_s, 3),
            "chunk_mib": self.chunk_mib,
            "ranks": self.ranks,
            "nodes": len({r.host for r in self.reports}),
            "copies": self.copies,
            "copies_skipped": self.copies_skipped,
            "run": {"model": self.run_model, "env": self.run_env},
            "templated": self.templated,
            "per_rank": [asdict(r) for r in self.reports],
        }

    def text(self) -> str:
        nodes = len({r.host for r in self.reports})
        where = f"{_count(self.copies, 'copy', 'copies')} on {_count(nodes, 'node')} "
        where += f"({_count(self.ranks, 'rank')})"
        size = f"{_count(self.files, 'file')}"
        size += f" + {_count(self.links, 'link')}" if self.links else ""
        size += f", {_bytes(self.bytes_total)}"
        if self.status == "skipped":
            head = f"hpcinfer stage: {self.model} is already staged and verified in {where}"
            lines = [head, f"  checked   {size} per copy in {self.seconds:.2f} s; nothing sent"]
        else:
            lines = [f"hpcinfer stage: staged {self.model} to {where}"]
            lines.append(f"  model     {size}, from {self.source}")
            sent = f"  sent      {_bytes(self.bytes_sent)} in {self.seconds:.2f} s: "
            sent += f"{self.gb_per_s:.3g} GB/s"
            if self.copies_skipped:
                sent += f" ({self.copies_skipped} of {self.copies} copies already verified)"
            lines.append(sent)
            for r in self.writers:
                if r.problems:
                    lines.append(f"  re-sent   rank {r.rank}: {'; '.join(r.problems)}")
        copy = self.reports[0].copy if self.reports else ""
        lines.append(f"  copy      {copy}" + (" (rank 0's)" if self.templated else ""))
        note = " (rank 0's paths; fill in each rank's)" if self.templated else ""
        lines.append(f"run it with{note}:")
        lines += [f"  {line}" for line in self.run_command()]
        return "\n".join(lines)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


class ProgressPrinter:
    """Rank 0's progress on stderr, a line at most every `every_s` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def __call__(self, sent: int, total: int, seconds: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s or sent >= total:
            return
        self._last = now
        rate = sent / seconds / 1e9 if seconds > 0 else 0.0
        sys.stderr.write(f"stage: {_bytes(sent)} of {_bytes(total)} sent ({rate:.2f} GB/s)\n")
        sys.stderr.flush()
