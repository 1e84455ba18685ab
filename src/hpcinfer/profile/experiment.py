"""One profiling experiment: the config `hpcinfer profile grid` writes and `profile run`,
`profile submit`, `profile card` and `profile summary` read.

The fields are those of the vLLM parallelism-profiling experiment configs users already
write (experiment_id, description, model, parallelism, data, warmup_iterations,
profile_iterations, output_dir), validated once (`extra="forbid"`) so a typo fails before an
engine starts. A relative `output_dir` is read against the config file's folder, so a
config runs the same from any working directory and inside a batch job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpcinfer.core.documents import invalid
from hpcinfer.errors import SpecError

EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Model):
    name: str = Field(description="A Hugging Face id, a local model folder, or 'tiny'.")
    precision: Literal["auto", "float16", "bfloat16", "float32"] = "auto"


class Parallelism(_Model):
    """The parallel plan. World size multiplies every degree but EP: expert parallelism
    splits the experts over the ranks TP x DP already make (TP4 x EP4 is 4 devices)."""

    tp: int = Field(1, ge=1, description="tensor parallel size")
    pp: int = Field(1, ge=1, description="pipeline parallel size")
    dp_replicate: int = Field(1, ge=1, description="data parallel replicas")
    dp_shard: int = Field(1, ge=1, description="data parallel shards (FSDP-style)")
    cp: int = Field(1, ge=1, description="context parallel size")
    ep: int = Field(1, ge=1, description="expert parallel size (not multiplied in)")

    @property
    def world_size(self) -> int:
        """Devices (= ranks) the plan needs: dp_replicate x dp_shard x cp x tp x pp."""
        return self.dp_replicate * self.dp_shard * self.cp * self.tp * self.pp


class DataSection(_Model):
    batch_size: int = Field(4, ge=1, description="prompts per iteration")
    seq_len: int = Field(128, ge=1, description="prompt length in tokens")
    max_tokens: int = Field(32, ge=1, description="tokens generated per prompt")


class ExperimentConfig(_Model):
    experiment_id: str
    description: str = ""
    model: ModelSection
    parallelism: Parallelism = Field(default_factory=Parallelism)
    data: DataSection = Field(default_factory=DataSection)
    warmup_iterations: int = Field(2, ge=0)
    timed_iterations: int = Field(
        5, ge=1, description="unprofiled iterations that give TTFT, TPOT and throughput"
    )
    profile_iterations: int = Field(5, ge=1, description="iterations under the profiler")
    output_dir: Path = Field(description="where the run writes; relative to this file's folder")

    @field_validator("experiment_id")
    @classmethod
    def _file_safe(cls, value: str) -> str:
        if not EXPERIMENT_ID.match(value):
            raise ValueError(
                "use letters, digits, '.', '_' and '-' only (it names files and folders)"
            )
        return value


def read_yaml(path: Path, what: str) -> Any:
    """A profiling YAML file (config or grid) as data; SpecError naming the file and line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}:{where} not valid YAML: {exc}") from exc


def load_experiment(path: Path) -> ExperimentConfig:
    """Read and validate one experiment config; errors name the file and the field."""
    raw = read_yaml(path, "experiment config")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: an experiment config is a YAML mapping (experiment_id: ...)")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(str(invalid(path, exc, "experiment config"))) from exc


def save_experiment(config: ExperimentConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def output_dir_of(config: ExperimentConfig, config_path: Path) -> Path:
    """The run's folder: `output_dir` as written if absolute, else under the config's folder."""
    if config.output_dir.is_absolute():
        return config.output_dir
    return (config_path.parent / config.output_dir).resolve()
