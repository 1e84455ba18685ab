"""What an engine kind is to hpcinfer (engine.kind in the spec), as one base class.

A kind (``vllm``, ``openai``, ``vllm-server``) is one subclass in one module: whether its
workers hold devices or talk to servers, the environment they need, the engine a worker
starts, and whether a job of the kind starts its own server fleet. Generic code (the job,
the worker, the factory, the CLI, submit) looks the kind up in ``engines.kinds`` and never
branches on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from hpcinfer.engines.base import Engine
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.spec import JobSpec


class EngineKind(ABC):
    """One engine kind. Subclasses set the class attributes and implement ``start``."""

    name: ClassVar[str]  # engine.kind in the spec, --engine on the command line
    # Workers are bound to device groups (placement, affinity); False: unbound workers.
    needs_devices: ClassVar[bool] = True
    # Workers dispatch to OpenAI-compatible servers: endpoints are resolved for the job,
    # each worker's batch is the endpoints' requests in flight, the model is the servers'.
    needs_servers: ClassVar[bool] = False
    # The job runs once (not once per rank) and starts one server per node itself.
    runs_once: ClassVar[bool] = False

    def worker_env(self, setup: EngineSetup) -> dict[str, str]:
        """Variables a worker must have before it starts (e.g. before importing vLLM)."""
        return {}

    def preload(self) -> None:
        """Slow imports a worker does while the coordinator still plans the job."""
        return None

    @abstractmethod
    def start(self, setup: EngineSetup) -> Engine:
        """The engine a worker runs, from its resolved setup."""

    def served_model(self, spec: JobSpec) -> str | None:
        """The model name requests ask the servers for; None: what the servers report."""
        return None

    def starts_fleet(self, spec: JobSpec) -> bool:
        """Whether a job of this spec starts (and stops) its own server fleet."""
        return False
