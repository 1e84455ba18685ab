"""The `job:` section of the job spec: what a batch job script asks the scheduler for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class JobScriptSpec(BaseModel):
    """Scheduler request and environment for `hpcinfer submit` (not part of a run's identity)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
