"""Small Kineto traces written by the tests, with known answers (times in microseconds)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


class TraceBuilder:
    """Events in the shape torch's profiler writes them (Kineto JSON)."""

    def __init__(self, rank: int | None = 0, world_size: int = 2, base_ns: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.base_ns = base_ns
        self.events: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}}
        ]

    def _x(self, cat: str, name: str, ts: float, dur: float, **fields: Any) -> TraceBuilder:
        self.events.append({"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, **fields})
        return self

    def kernel(self, name: str, ts: float, dur: float, stream: int = 7) -> TraceBuilder:
        args = {"stream": stream, "correlation": len(self.events), "External id": 1}
        return self._x("kernel", name, ts, dur, pid=0, tid=stream, args=args)

    def memcpy(self, ts: float, dur: float) -> TraceBuilder:
        return self._x("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", ts, dur, pid=0, tid=7)

    def cpu_op(self, name: str, ts: float, dur: float, tid: int = 1, **args: Any) -> TraceBuilder:
        return self._x("cpu_op", name, ts, dur, pid=1, tid=tid, args=args)

    def annotation(self, name: str, ts: float, dur: float, gpu: bool = False) -> TraceBuilder:
        cat = "gpu_user_annotation" if gpu else "user_annotation"
        return self._x(cat, name, ts, dur, pid=0 if gpu else 1, tid=7 if gpu else 1)

    def steps(self, count: int, length: float, start: float = 0.0) -> TraceBuilder:
        for i in range(count):
            self.annotation(f"ProfilerStep#{i}", start + i * length, length)
        return self

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 1, "deviceProperties": []}
        if self.rank is not None:
            doc["distributedInfo"] = {
                "backend": "nccl",
                "rank": self.rank,
                "world_size": self.world_size,
            }
        doc["traceEvents"] = self.events
        doc["traceName"] = "test"
        doc["baseTimeNanoseconds"] = self.base_ns
        return doc

    def text(self) -> bytes:
        return json.dumps(self.document()).encode()

    def write(self, path: Path, *, compress: bool | None = None) -> Path:
        data = self.text()
        gz = path.name.endswith(".gz") if compress is None else compress
        path.write_bytes(gzip.compress(data) if gz else data)
        return path
