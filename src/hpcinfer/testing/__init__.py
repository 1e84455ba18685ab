"""Test doubles shipped with hpcinfer, for its own tests and benchmarks and for users' CI.

`stub_server` is an OpenAI-compatible server that does no compute: clients (the dispatcher,
`vllm bench serve`) can be tested against exact token counts and injected faults, and
benchmarked without a model in the way. Nothing in hpcinfer's core imports this package.

The names below are loaded lazily: `python -m hpcinfer.testing.stub_server` would otherwise
find its own module already imported by this package (runpy warns about that), and
importing `hpcinfer.testing` should not pull in aiohttp before it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcinfer.testing.stub_server import MODES, Fault, StubConfig, StubServer

__all__ = ["MODES", "Fault", "StubConfig", "StubServer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hpcinfer.testing import stub_server

        return getattr(stub_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
