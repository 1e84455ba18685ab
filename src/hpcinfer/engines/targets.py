"""Where a dispatcher sends requests: `client.urls` plus the usable entries of a registry.

Resolved once by the coordinator, before any worker starts, so a missing registry or a fleet
with no ready server fails at once with the fix, not inside a worker log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcinfer.core.endpoints_registry import LIVE_STATES, RegistryError, read_registry, usable
from hpcinfer.engines.kinds import kind_of
from hpcinfer.engines.openai_engine import ClientSetup, Target
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec


def registry_path(spec: JobSpec, cwd: Path) -> Path | None:
    if not spec.client.registry:
        return None
    path = Path(spec.client.registry).expanduser()
    return path if path.is_absolute() else cwd / path


@dataclass(frozen=True)
class Targets:
    """The endpoints to dispatch to now, and how many there will be once the fleet is up
    (ready ones plus registry entries still starting): the worker asks for enough work to
    fill servers that join after the dispatch began (a one-shot fleet starts at its first)."""

    endpoints: list[Target]
    expected: int


def resolve_targets(spec: JobSpec, cwd: Path) -> Targets:
    """Every endpoint to dispatch to, URLs first, without duplicates."""
    targets: dict[str, Target] = {}
    for url in spec.client.urls:
        clean = url.rstrip("/")
        if not clean.startswith(("http://", "https://")):
            raise SpecError(f"--url {url!r}: write a base URL such as http://127.0.0.1:8000")
        targets.setdefault(clean, Target(clean))
    live: set[str] = set()
    path = registry_path(spec, cwd)
    if path is not None:
        entries = read_registry(path)
        ready = usable(entries)
        if not ready and not targets:
            states = ", ".join(f"{e.url} {e.state}" for e in entries) or "no endpoints"
            raise RegistryError(
                f"endpoints registry {path} has no ready server ({states}); wait for them with "
                f"`hpcinfer endpoints {path} --wait 900`, or see the server logs it names"
            )
        for entry in ready:
            targets.setdefault(entry.url, Target(entry.url, entry.model))
        live = {e.url for e in entries if e.state in LIVE_STATES}
    if not targets:
        raise SpecError(
            "engine openai needs servers: --endpoints endpoints.json (from `hpcinfer serve`) "
            "or --url http://HOST:PORT (repeatable)"
        )
    return Targets(list(targets.values()), len(live | set(targets)))


def client_setup(spec: JobSpec, cwd: Path, targets: list[Target]) -> ClientSetup:
    path = registry_path(spec, cwd)
    return ClientSetup(
        targets=tuple(targets),
        client=spec.client,
        sampling=spec.sampling,
        model=kind_of(spec).served_model(spec),
        registry=str(path) if path else None,
    )
