"""The endpoints registry (`endpoints.json`): which servers exist, where, and in what state.

Written by `hpcinfer serve` (atomically, on every state change, so a reader never sees half a
file) and read by the dispatcher, `hpcinfer endpoints` and job scripts. Across nodes each
node writes its own part (`<registry>.parts/<node>-<rank>.json`) and rank 0 merges the parts
into the registry, so no two processes ever write one file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcinfer.errors import HpcinferError
from hpcinfer.outputs.atomic import write_text_atomic

REGISTRY_VERSION = 1

STARTING = "starting"
READY = "ready"
UNHEALTHY = "unhealthy"  # process alive, health check failing
DEAD = "dead"  # was started, then its process exited
FAILED = "failed"  # never became ready (exited, or readiness timeout)
STOPPED = "stopped"  # shut down by hpcinfer
STATES = (STARTING, READY, UNHEALTHY, DEAD, FAILED, STOPPED)
LIVE_STATES = (STARTING, READY, UNHEALTHY)


class RegistryError(HpcinferError):
    """An endpoints registry cannot be read or holds no usable endpoint."""

    exit_code = 2


@dataclass
class Endpoint:
    """One server as the registry records it."""

    url: str
    model: str
    node: str = ""
    devices: list[str] = field(default_factory=list)
    pid: int | None = None
    state: str = STARTING
    started: str | None = None
    ready: str | None = None
    log: str | None = None
    error: str | None = None
    rank: int = 0
    startup: dict[str, float | None] | None = None
    """Once ready: its start-up phases (core.startup_phases.StartupPhases as a dict)."""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """A server spanning nodes: every node it spans, in node-rank order ({node, address,
    node_rank, rank, devices}); `node` and `devices` above are then its first node's and
    every node's ("node:device"). Empty for a server on one node."""
    verified: dict[str, Any] | None = None
    """Once verified: the temperature-0 completion it gave ({prompt, text, latency_s})."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def spans_nodes(self) -> bool:
        return len(self.nodes) > 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Endpoint:
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not data.get("url"):
            raise RegistryError(f"{where}: an endpoint needs at least a 'url' (got {data!r})")
        entry = cls(**{k: v for k, v in data.items() if k in known})
        entry.url = entry.url.rstrip("/")
        return entry


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_registry(path: Path, endpoints: Sequence[Endpoint], job: str | None = None) -> None:
    """Replace the registry atomically; `job`: the scheduler job that wrote it, when a
    reader must tell it from an earlier job's (a failed serve's entry)."""
    document: dict[str, Any] = {
        "version": REGISTRY_VERSION,
        "updated": now_iso(),
        "endpoints": [e.as_dict() for e in endpoints],
    }
    if job is not None:
        document["job"] = job
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")


def registry_job(path: Path) -> str | None:
    """The scheduler job that wrote the registry, when it says (None: unknown, unreadable)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    job = document.get("job") if isinstance(document, dict) else None
    return job if isinstance(job, str) else None


def read_registry(path: Path) -> list[Endpoint]:
    """Every endpoint in a registry file, whatever its state; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(
            f"endpoints registry {path} does not exist: start servers with `hpcinfer serve "
            f"--endpoints {path}`, or pass --url"
        ) from None
    except OSError as exc:
        raise RegistryError(f"endpoints registry {path} cannot be read: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(
            f"endpoints registry {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
            "it is written by `hpcinfer serve`: rerun it, or fix the file by hand"
        ) from None
    entries = document.get("endpoints") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise RegistryError(
            f'endpoints registry {path}: expected {{"endpoints": [...]}} or a list of endpoints'
        )
    return [Endpoint.from_dict(e, f"{path} endpoint {i}") for i, e in enumerate(entries)]


def parts_dir(registry: Path) -> Path:
    return registry.with_name(registry.name + ".parts")


def part_path(registry: Path, node: str, rank: int) -> Path:
    return parts_dir(registry) / f"{node}-{rank}.json"


def read_parts(registry: Path) -> list[Endpoint]:
    """Every endpoint of every node's part, in rank then URL order."""
    entries: list[Endpoint] = []
    for part in sorted(parts_dir(registry).glob("*.json")):
        try:
            entries.extend(read_registry(part))
        except RegistryError:
            continue  # a part being replaced right now is read on the next merge
    entries.sort(key=lambda e: (e.rank, e.url))
    return entries


def merge_parts(registry: Path) -> list[Endpoint]:
    """Merge every node's part into the registry; returns the merge."""
    merged = read_parts(registry)
    write_registry(registry, merged)
    return merged


def usable(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """Endpoints a dispatcher may send to (ready ones; unhealthy ones may recover)."""
    return [e for e in endpoints if e.state in (READY, UNHEALTHY)]
