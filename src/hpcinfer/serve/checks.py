"""`hpcinfer endpoints`: is every endpoint of a registry (or a list of URLs) up right now,
and waiting until it is (the Aurora vLLM server scripts' test_servers.sh, with a deadline).

Endpoints are checked concurrently, each with a short timeout, so one hung server does not
hide the others. While waiting, a registry that does not exist yet (the servers are still
being planned) is waited for; one that names a failed server ends the wait at once, unless
it was written before the wait began (a new `hpcinfer serve` may be about to replace it)
by another job than this one (a `serve` that failed before starting any server lists
itself as failed, with its job).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.core.endpoints_registry import (
    DEAD,
    FAILED,
    READY,
    STOPPED,
    Endpoint,
    RegistryError,
    read_registry,
    registry_job,
)
from hpcinfer.core.server_probe import CHECK_TIMEOUT_S, Check, check_servers
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.failed_entry import scheduler_job

WAIT_POLL_S = 2.0
GONE = (FAILED, DEAD, STOPPED)
"""States of an endpoint that will not come up (as the registry says)."""


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: Endpoint
    check: Check

    @property
    def up(self) -> bool:
        return self.check.up

    def check_text(self) -> str:
        if self.check.up:
            latency = self.check.latency_s or 0.0
            return f"UP {latency * 1000:.0f} ms"
        return f"DOWN: {self.check.error}"

    def as_dict(self) -> dict[str, Any]:
        latency = self.check.latency_s
        return {
            **self.endpoint.as_dict(),
            "up": self.check.up,
            "latency_ms": None if latency is None else round(latency * 1000, 1),
            "check_error": self.check.error,
        }


def targets(registry: Path | None, urls: Sequence[str]) -> list[Endpoint]:
    """The registry's endpoints, then --url ones it does not list (state unknown: '-')."""
    found = read_registry(registry) if registry is not None else []
    known = {e.url for e in found}
    extra = [u.rstrip("/") for u in urls if u.rstrip("/") not in known]
    return found + [Endpoint(url=u, model="", state="-") for u in extra]


def check_all(
    endpoints: Sequence[Endpoint], api_key: str | None, timeout_s: float = CHECK_TIMEOUT_S
) -> list[EndpointStatus]:
    """Check every endpoint now, concurrently; results in the endpoints' order."""
    checks = check_servers([(e.url, e.model) for e in endpoints], api_key, timeout_s)
    return [EndpointStatus(e, check) for e, check in zip(endpoints, checks, strict=True)]


def summary_line(statuses: Sequence[EndpointStatus]) -> str:
    up = sum(1 for s in statuses if s.up)
    return f"{up} up, {len(statuses) - up} down"


@dataclass
class _Look:
    statuses: list[EndpointStatus]
    fresh: bool  # the registry was written after the wait began
    problem: str | None = None  # why it is not ready yet, for the timeout message


def wait_until_up(
    registry: Path | None,
    urls: Sequence[str],
    wait_s: float,
    api_key: str | None,
    *,
    expect: int | None = None,
    poll_s: float = WAIT_POLL_S,
    timeout_s: float = CHECK_TIMEOUT_S,
    on_poll: Callable[[str], None] | None = None,
) -> list[EndpointStatus]:
    """Wait up to `wait_s` until every endpoint is ready (registry) and up (checked), and at
    least `expect` exist. Raises ServeError on a failed endpoint or the timeout, and the
    last RegistryError when the registry never became readable."""
    began = time.time()
    deadline = time.monotonic() + wait_s
    last_error: RegistryError | None = None
    last_problem = "nothing checked yet"
    while True:
        try:
            look = _look(registry, urls, api_key, began, expect, timeout_s)
            last_error = None
        except RegistryError as exc:
            last_error, look = exc, None
        if look is not None:
            if look.problem is None:
                return look.statuses
            if look.fresh and _failed(look.statuses):
                raise ServeError(_failed(look.statuses))
            last_problem = look.problem
        if time.monotonic() >= deadline:
            if last_error is not None:
                raise last_error
            raise ServeError(
                f"endpoints not all up after {wait_s:.0f}s: {last_problem}; read the servers' "
                "logs (the registry's 'log' field) or the output of `hpcinfer serve`"
            )
        if on_poll is not None:
            on_poll(last_problem if last_error is None else str(last_error))
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _look(
    registry: Path | None,
    urls: Sequence[str],
    api_key: str | None,
    began: float,
    expect: int | None,
    timeout_s: float,
) -> _Look:
    endpoints = targets(registry, urls)
    try:
        fresh = registry is None or registry.stat().st_mtime >= began
    except OSError:
        fresh = False  # replaced right now: the next look reads the new one
    if not fresh and registry is not None:
        # `serve & endpoints --wait` in one job: a serve that failed in its first second
        # may have written its failed entry before this wait began.
        job = scheduler_job()
        fresh = job is not None and registry_job(registry) == job
    if len(endpoints) < max(1, expect or 0):
        need = max(1, expect or 0)
        # A failed one (e.g. the failed entry of a serve that stopped before starting its
        # servers) ends the wait now, whatever the count.
        gone = [e for e in endpoints if e.state in GONE]
        statuses = check_all(gone, api_key, timeout_s) if gone else []
        return _Look(statuses, fresh, f"{len(endpoints)} endpoint(s) listed, waiting for {need}")
    starting = [e for e in endpoints if e.state not in (READY, "-")]
    statuses = check_all(endpoints, api_key, timeout_s)
    down = [s for s in statuses if not s.up]
    if starting:
        states = ", ".join(f"{e.url} {e.state}" for e in starting)
        return _Look(statuses, fresh, f"not ready yet: {states}")
    if down:
        problem = "; ".join(f"{s.endpoint.url} {s.check_text()}" for s in down)
        return _Look(statuses, fresh, problem)
    return _Look(statuses, fresh)


def _failed(statuses: Sequence[EndpointStatus]) -> str:
    """The message for endpoints the registry says will not come up ('' when none)."""
    gone = [s.endpoint for s in statuses if s.endpoint.state in GONE]
    if not gone:
        return ""
    lines = [
        f"{e.url} {e.state}: {e.error or 'no error recorded'}"
        + (f" (log {e.log})" if e.log else "")
        for e in gone
    ]
    others = len(statuses) - len(gone)
    return (
        f"{len(gone)} endpoint(s) will not come up ({others} other(s) listed):\n  "
        + "\n  ".join(lines)
    )
