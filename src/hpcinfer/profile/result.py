"""`profile.json`: what one profiled run measured, in the experiment's output folder.

`profile run` writes it; `profile card`, `profile summary` and `report` read it. Latency
and throughput come from the unprofiled timed iterations (a profiled step is slower);
throughput counts tokens actually processed, never the configured lengths.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hpcinfer.core.documents import read_document
from hpcinfer.core.startup_phases import StartupPhases as StartupPhases  # its home: core
from hpcinfer.profile.experiment import ExperimentConfig

PROFILE_FILE = "profile.json"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Versions(_Doc):
    hpcinfer: str
    python: str
    torch: str | None = None
    vllm: str | None = None
    driver: str | None = Field(None, description="GPU driver (CUDA/Level Zero), if any")
    communication_library: str | None = Field(None, description="e.g. 'NCCL 2.21.5', 'shm'")


class Hardware(_Doc):
    device_type: str = Field(description="'cpu', 'cuda' or 'xpu'")
    device_model: str = Field(description="e.g. 'NVIDIA H100 80GB HBM3' or the CPU model")
    count_per_node: int
    nodes: int = 1
    network_topology: str | None = None


class Timing(_Doc):
    """From the timed (unprofiled) iterations."""

    iterations: int
    input_tokens: int
    output_tokens: int
    ttft_ms: float | None
    tpot_ms: float | None
    step_ms: float = Field(description="mean wall time of one timed iteration")
    output_tokens_per_s: float
    total_tokens_per_s: float


class ProfilerOverhead(_Doc):
    step_ms_unprofiled: float
    step_ms_profiled: float

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.step_ms_profiled / self.step_ms_unprofiled - 1.0)


class RankFiles(_Doc):
    rank: int
    kineto_trace: str
    torch_et: str | None = None
    timing_stats: str | None = None
    operators: str | None = None


class ProfileResult(_Doc):
    experiment: ExperimentConfig
    versions: Versions
    hardware: Hardware
    timing: Timing
    profiler: ProfilerOverhead
    startup: StartupPhases
    ranks: list[RankFiles]
    expected_ranks: int
    missing_ranks: list[int] = Field(default_factory=list)
    nsys: str | None = Field(None, description="the nsys report, when run under --nsys")
    notes: list[str] = Field(
        default_factory=list,
        description="what the run could not record and why (no execution trace, a trace "
        "without a rank set aside, ...)",
    )


def read_profile_result(run_dir: Path) -> ProfileResult:
    """The run's profile.json; a missing or wrong file is an error naming it and the field."""
    return read_document(run_dir / PROFILE_FILE, ProfileResult, "profile result")
