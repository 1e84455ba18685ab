"""The one place that turns an EngineSetup into a running engine (offline vLLM or the
dispatcher), so the worker knows no adapter by name."""

from __future__ import annotations

from hpcinfer.engines.base import Engine
from hpcinfer.engines.vllm_offline import EngineSetup

ENGINE_KIND_ENV = "HPCINFER_ENGINE"
"""Set to 'openai' in a dispatcher worker's environment: it needs no vLLM import at all."""


def start_engine(setup: EngineSetup) -> Engine:
    if setup.client is not None:
        from hpcinfer.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(setup.client)
    from hpcinfer.engines.vllm_offline import VllmOfflineEngine

    return VllmOfflineEngine(setup)
