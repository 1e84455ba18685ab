"""engine.kind vllm: one offline vLLM engine per worker, in the worker process."""

from __future__ import annotations

import contextlib

from hpcinfer.engines.base import Engine
from hpcinfer.engines.kinds.base import EngineKind
from hpcinfer.engines.vllm_offline import EngineSetup, engine_env


class VllmKind(EngineKind):
    name = "vllm"
    needs_devices = True

    def worker_env(self, setup: EngineSetup) -> dict[str, str]:
        return engine_env(setup)

    def preload(self) -> None:
        """Import vLLM (about 10 s) before the worker's config arrives, not after."""
        with contextlib.suppress(Exception):
            import vllm  # noqa: F401

    def start(self, setup: EngineSetup) -> Engine:
        from hpcinfer.engines.vllm_offline import VllmOfflineEngine

        return VllmOfflineEngine(setup)
