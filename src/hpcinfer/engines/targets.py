"""Where a dispatcher sends requests: `client.urls` plus the usable entries of a registry.

Resolved once by the coordinator, before any worker starts, so a missing registry or a fleet
with no ready server fails at once with the fix, not inside a worker log.
"""

from __future__ import annotations

from pathlib import Path

from hpcinfer.engines.openai_engine import ClientSetup, Target
from hpcinfer.errors import SpecError
from hpcinfer.serve.registry import LIVE_STATES, RegistryError, read_registry, usable
from hpcinfer.spec import JobSpec


def registry_path(spec: JobSpec, cwd: Path) -> Path | None:
    if not spec.client.registry:
        return None
    path = Path(spec.client.registry).expanduser()
    return path if path.is_absolute() else cwd / path


def resolve_targets(spec: JobSpec, cwd: Path) -> list[Target]:
    """Every endpoint to dispatch to, URLs first, without duplicates."""
    targets: dict[str, Target] = {}
    for url in spec.client.urls:
        clean = url.rstrip("/")
        if not clean.startswith(("http://", "https://")):
            raise SpecError(f"--url {url!r}: write a base URL such as http://127.0.0.1:8000")
        targets.setdefault(clean, Target(clean))
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
    if not targets:
        raise SpecError(
            "engine openai needs servers: --endpoints endpoints.json (from `hpcinfer serve`) "
            "or --url http://HOST:PORT (repeatable)"
        )
    return list(targets.values())


def expected_endpoints(spec: JobSpec, cwd: Path, targets: list[Target]) -> int:
    """Endpoints the dispatcher will have once the fleet is up: the ready ones plus those of
    the registry still starting, so the worker asks for enough work to fill servers that
    join after the dispatch began (a one-shot fleet starts dispatching at the first)."""
    path = registry_path(spec, cwd)
    if path is None:
        return len(targets)
    try:
        live = {e.url for e in read_registry(path) if e.state in LIVE_STATES}
    except RegistryError:
        return len(targets)
    return len(live | {t.url for t in targets})


def client_setup(spec: JobSpec, cwd: Path, targets: list[Target]) -> ClientSetup:
    path = registry_path(spec, cwd)
    return ClientSetup(
        targets=tuple(targets),
        client=spec.client,
        sampling=spec.sampling,
        # engine openai: --model names the served model; a one-shot fleet serves its own
        model=spec.model if spec.engine.kind == "openai" else None,
        registry=str(path) if path else None,
    )
