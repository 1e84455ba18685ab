"""Which endpoint gets the next request: least outstanding requests, bounded per endpoint.

Least-outstanding routing sends work where it finishes soonest: a slow server (long outputs,
a busy node) keeps its requests longer and so gets fewer new ones, where the Aurora vLLM server
scripts' fixed split left fast hosts idle. An endpoint that fails `eject_after` times in a
row leaves the
rotation and is re-checked (`/health`) with backoff before it takes requests again. Plain
bookkeeping, no I/O: the dispatcher owns the clock and the HTTP calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

RECHECK_FIRST_S = 0.5
RECHECK_MAX_S = 10.0


@dataclass
class EndpointState:
    url: str
    model: str
    outstanding: int = 0
    in_rotation: bool = True
    retired: bool = False  # the registry says it is gone (dead, failed, stopped)
    consecutive_failures: int = 0
    ok: int = 0
    failed: int = 0
    recheck_delay_s: float = RECHECK_FIRST_S
    last_error: str = ""
    sent: int = 0

    @property
    def usable(self) -> bool:
        return self.in_rotation and not self.retired


@dataclass
class EndpointPool:
    """The endpoints of one dispatcher and their load."""

    limit: int
    eject_after: int
    endpoints: dict[str, EndpointState] = field(default_factory=dict)

    def add(self, url: str, model: str) -> EndpointState:
        state = self.endpoints.get(url)
        if state is None:
            state = self.endpoints[url] = EndpointState(url, model)
        elif state.retired:
            state.retired = False
            state.in_rotation = True
            state.consecutive_failures = 0
        return state

    def retire(self, url: str) -> None:
        state = self.endpoints.get(url)
        if state is not None:
            state.retired = True

    def pick(self, avoid: Iterable[str] = ()) -> EndpointState | None:
        """The usable endpoint with a free slot and the fewest outstanding requests,
        preferring one not in `avoid` (where this record already failed)."""
        avoided = set(avoid)
        best: EndpointState | None = None
        fallback: EndpointState | None = None
        for state in self.endpoints.values():
            if not state.usable or state.outstanding >= self.limit:
                continue
            if state.url in avoided:
                if fallback is None or _before(state, fallback):
                    fallback = state
            elif best is None or _before(state, best):
                best = state
        if best is None and fallback is not None and not self._others_usable(avoided):
            best = fallback  # every usable endpoint failed this record once: any will do
        if best is not None:
            best.outstanding += 1
            best.sent += 1
        return best

    def _others_usable(self, avoided: set[str]) -> bool:
        """Some endpoint not yet tried is usable (busy now): wait for it rather than
        resend to one that just failed."""
        return any(s.usable and s.url not in avoided for s in self.endpoints.values())

    def release(self, state: EndpointState, ok: bool, error: str = "") -> bool:
        """A request ended. True when this failure took the endpoint out of rotation."""
        state.outstanding -= 1
        if ok:
            state.ok += 1
            state.consecutive_failures = 0
            return False
        state.failed += 1
        state.consecutive_failures += 1
        state.last_error = error
        if state.in_rotation and state.consecutive_failures >= self.eject_after:
            state.in_rotation = False
            state.recheck_delay_s = RECHECK_FIRST_S
            return True
        return False

    def restore(self, state: EndpointState) -> None:
        """A re-check passed: the endpoint takes requests again."""
        state.in_rotation = True
        state.consecutive_failures = 0

    def next_recheck_delay(self, state: EndpointState) -> float:
        delay = state.recheck_delay_s
        state.recheck_delay_s = min(RECHECK_MAX_S, delay * 2)
        return delay

    def any_usable(self) -> bool:
        return any(s.usable for s in self.endpoints.values())

    def counts(self) -> dict[str, int]:
        """Records answered per endpoint."""
        return {url: s.ok for url, s in self.endpoints.items()}


def _before(a: EndpointState, b: EndpointState) -> bool:
    """Fewer outstanding first; on a tie the one sent fewer requests (spreads a light load)."""
    return (a.outstanding, a.sent) < (b.outstanding, b.sent)
