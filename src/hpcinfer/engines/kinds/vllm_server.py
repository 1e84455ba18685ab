"""engine.kind vllm-server: the job starts a vLLM server fleet (one server per node) and
dispatches to it like engine openai, then stops it; with client.registry it reuses one."""

from __future__ import annotations

from hpcinfer.engines.kinds.openai import OpenAIKind
from hpcinfer.spec import JobSpec


class VllmServerKind(OpenAIKind):
    name = "vllm-server"
    runs_once = True

    def served_model(self, spec: JobSpec) -> str | None:
        """The fleet serves the job's own model, under the name its servers report."""
        return None

    def starts_fleet(self, spec: JobSpec) -> bool:
        return not spec.client.registry
