"""The one place that turns an EngineSetup into a running engine: its kind starts it, so
the worker knows no adapter by name."""

from __future__ import annotations

from hpcinfer.engines.base import Engine
from hpcinfer.engines.kinds import engine_kind
from hpcinfer.engines.vllm_offline import EngineSetup


def start_engine(setup: EngineSetup) -> Engine:
    return engine_kind(setup.engine.kind).start(setup)
