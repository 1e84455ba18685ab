"""What a run returns and records in run.json, as typed models (the file's shape is the
models' JSON: `summary` in run.json, `hpcinfer run --json` on stdout)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hpcinfer.exitcodes import ExitCode


class WorkerSummary(BaseModel):
    """One worker's share of this run (of this invocation, not of earlier resumed ones)."""

    model_config = ConfigDict(extra="allow")  # a counter the workers add later is kept

    worker: int
    rank: int = 0
    host: str = ""
    devices: list[str] = Field(default_factory=list)
    startup_s: float | None = None
    units: int = 0
    records: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    log: str


class RunSummary(BaseModel):
    """The outcome of one `run_job`: counts over the whole job (every run of it), figures of
    this run, and where the results are."""

    model_config = ConfigDict(extra="forbid")

    status: str
    """ok | finished_with_errors | incomplete"""
    exit_code: ExitCode
    """What `hpcinfer run` exits with for this outcome."""
    out_dir: str
    records_total: int
    records_ok: int
    records_failed: int
    records_this_run: int
    resumed: bool
    prompt_tokens: int
    output_tokens: int
    wall_s: float
    generation_s: float | None
    output_tokens_per_s: float
    workers: list[WorkerSummary]
    message: str = ""
    endpoints: dict[str, int] = Field(default_factory=dict)
    """Records answered per server (dispatcher engines), over every run of the job."""

    @property
    def results_path(self) -> str:
        return f"{self.out_dir}/results.jsonl"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (exit_code as a number), as run.json and `--json` hold it."""
        return self.model_dump(mode="json")


class RunDocument(BaseModel):
    """run.json: enough to trace any result back to what produced it and to reproduce it."""

    model_config = ConfigDict(extra="allow")

    finished_at: str
    spec: dict[str, Any]
    model_path: str
    versions: dict[str, str | None]
    host: dict[str, str]
    hardware: dict[str, Any]
    placement: list[dict[str, Any]]
    summary: RunSummary
