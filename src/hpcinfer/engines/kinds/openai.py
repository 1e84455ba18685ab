"""engine.kind openai: workers dispatch to running OpenAI-compatible servers (no vLLM)."""

from __future__ import annotations

from hpcinfer.engines.base import Engine
from hpcinfer.engines.kinds.base import EngineKind
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.errors import EngineError
from hpcinfer.spec import JobSpec


class OpenAIKind(EngineKind):
    name = "openai"
    needs_devices = False  # the servers hold the devices
    needs_servers = True

    def start(self, setup: EngineSetup) -> Engine:
        from hpcinfer.engines.openai_engine import OpenAIEngine

        if setup.client is None:
            raise EngineError(f"engine {setup.engine.kind} needs servers, and none were given")
        return OpenAIEngine(setup.client)

    def served_model(self, spec: JobSpec) -> str | None:
        """--model names the model the servers serve."""
        return spec.model
