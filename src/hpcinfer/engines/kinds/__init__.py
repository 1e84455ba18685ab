"""The engine kinds hpcinfer knows, by name: the one place that lists them.

Generic code calls ``kind_of(spec)`` (or ``engine_kind(name)``) and asks the kind; a new
engine is one ``EngineKind`` subclass in one module, registered with
``register_engine_kind``.
"""

from __future__ import annotations

from hpcinfer.engines.kinds.base import EngineKind
from hpcinfer.engines.kinds.openai import OpenAIKind
from hpcinfer.engines.kinds.vllm import VllmKind
from hpcinfer.engines.kinds.vllm_server import VllmServerKind
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec

ENGINE_KIND_ENV = "HPCINFER_ENGINE"
"""The kind's name in a worker's environment, so it preloads what its kind needs (a
dispatcher worker imports no vLLM at all)."""

_REGISTRY: dict[str, EngineKind] = {}


def register_engine_kind(kind: type[EngineKind]) -> type[EngineKind]:
    """Make ``kind`` available as engine.kind ``kind.name`` (usable as a class decorator)."""
    _REGISTRY[kind.name] = kind()
    return kind


def unregister_engine_kind(name: str) -> None:
    _REGISTRY.pop(name, None)


for _builtin in (VllmKind, OpenAIKind, VllmServerKind):
    register_engine_kind(_builtin)


def engine_kind_names() -> list[str]:
    return list(_REGISTRY)


def engine_kind(name: str) -> EngineKind:
    """The kind registered as ``name``; an error listing the registered kinds if none is."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise SpecError(f"engine kind {name!r} is not known; choose one of: {known}") from None


def kind_of(spec: JobSpec) -> EngineKind:
    return engine_kind(spec.engine.kind)


__all__ = [
    "ENGINE_KIND_ENV",
    "EngineKind",
    "engine_kind",
    "engine_kind_names",
    "kind_of",
    "register_engine_kind",
    "unregister_engine_kind",
]
