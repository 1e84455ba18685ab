"""Experiment grids: models x tp x pp x dp x ep x batch x lengths, filtered, into one validated
experiment config per point.

A grid file names each axis (a number or a list), an optional `filter` over the axes and
the machine's devices (`tp * pp <= devices`, devices = nodes x the hardware profile's
devices per node), and how to name the experiments (`id: "E1.{index}_{model}_tp{tp}"`).
Every point becomes an `ExperimentConfig` with `output_dir: <experiment_id>`, checked against
what vLLM can run (`profile.vllm_parallel`): points vLLM cannot run are refused with the
reason, never written as configs whose EP or DP would silently be dropped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpcinfer.core.documents import invalid
from hpcinfer.errors import SpecError
from hpcinfer.profile.experiment import ExperimentConfig, read_yaml
from hpcinfer.profile.grid_filter import FilterSyntaxError, GridFilter, parse_filter
from hpcinfer.profile.vllm_parallel import VllmPlan, model_architecture, plan_for_vllm

AXES = ("tp", "pp", "dp", "ep", "batch_size", "seq_len", "max_tokens")
FILTER_NAMES = frozenset([*AXES, "world_size", "devices", "devices_per_node", "nodes"])
TEMPLATE_NAMES = frozenset([*AXES, "index", "model", "precision", "world_size"])
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LABEL_UNSAFE = re.compile(r"[^a-z0-9.-]+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GridModel(_Model):
    name: str = Field(description="A Hugging Face id, a local model folder, or 'tiny'.")
    precision: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    label: str | None = Field(
        None, description="Short name in experiment ids (default: from the name)."
    )

    def short(self) -> str:
        if self.label:
            return self.label
        return _LABEL_UNSAFE.sub("-", self.name.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")


def _axis() -> Any:
    return Field(default_factory=lambda: [1], min_length=1)


class GridSpec(_Model):
    """A grid file (or a preset): the axes, the filter and how experiments are named."""

    description: str = Field("", description="Each experiment's description; may use {tp} ...")
    profile: str | None = Field(
        None, description="Hardware profile whose devices per node the filter's devices counts."
    )
    nodes: int = Field(1, ge=1, description="Nodes the filter's `devices` counts.")
    models: list[GridModel] = Field(min_length=1)
    tp: list[int] = _axis()
    pp: list[int] = _axis()
    dp: list[int] = _axis()
    ep: list[int] = _axis()
    batch_size: list[int] = Field(default_factory=lambda: [4], min_length=1)
    seq_len: list[int] = Field(default_factory=lambda: [128], min_length=1)
    max_tokens: list[int] = Field(default_factory=lambda: [32], min_length=1)
    filter: list[str] = Field(default_factory=list, description="Every expression must hold.")
    id: str | None = Field(None, description="Experiment id template, e.g. E1.{index}_{model}.")
    warmup_iterations: int = Field(2, ge=0)
    timed_iterations: int = Field(5, ge=1)
    profile_iterations: int = Field(5, ge=1)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: object) -> object:
        """A model may be given by name alone."""
        items = value if isinstance(value, list) else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]

    @field_validator(*AXES, mode="before")
    @classmethod
    def _one_or_list(cls, value: object) -> object:
        return value if isinstance(value, list) else [value]

    @field_validator(*AXES)
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        bad = [v for v in value if v < 1]
        if bad:
            raise ValueError(f"every value must be 1 or more, found {bad}")
        return list(dict.fromkeys(value))

    @field_validator("filter", mode="before")
    @classmethod
    def _filters(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class GridExperiment:
    config: ExperimentConfig
    vllm: VllmPlan


@dataclass
class GridExpansion:
    """What a grid became: the experiments to write, and the points left out and why."""

    source: str
    devices_per_node: int
    devices: int
    experiments: list[GridExperiment] = field(default_factory=list)
    filtered: list[tuple[str, str]] = field(default_factory=list)  # (point, filter text)
    refused: list[tuple[str, list[str]]] = field(default_factory=list)  # (id, reasons)


def grid_error(source: str, where: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{source}: {where}: {problem}; {fix}")


def load_grid(path: Path) -> GridSpec:
    """Read and validate a grid file; errors name the file, the field and the fix."""
    raw = read_yaml(path, "experiment grid")
    return grid_from_data(raw, str(path))


def grid_from_data(raw: Any, source: str) -> GridSpec:
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source}: an experiment grid is a YAML mapping (models: [...], tp: [1, 2], ...)"
        )
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(str(invalid(Path(source), exc, "experiment grid"))) from exc


def _fill(template: str, values: dict[str, Any], source: str, what: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TEMPLATE_NAMES:
            raise grid_error(
                source,
                what,
                f"unknown placeholder {{{name}}}",
                f"use {', '.join('{' + n + '}' for n in sorted(TEMPLATE_NAMES))}",
            )
        return str(values[name])

    return _PLACEHOLDER.sub(one, template)


def _default_id(grid: GridSpec) -> str:
    """{model} and tp always, and every other axis that takes more than one value."""
    parts = ["{model}", "tp{tp}"]
    short = {
        "pp": "pp",
        "dp": "dp",
        "ep": "ep",
        "batch_size": "b",
        "seq_len": "s",
        "max_tokens": "o",
    }
    for axis, prefix in short.items():
        if len(getattr(grid, axis)) > 1:
            parts.append(f"{prefix}{{{axis}}}")
    return "_".join(parts)


def _filters(grid: GridSpec, source: str) -> list[GridFilter]:
    parsed = []
    for number, text in enumerate(grid.filter):
        try:
            parsed.append(parse_filter(text, FILTER_NAMES))
        except FilterSyntaxError as exc:
            raise grid_error(
                source, f"filter[{number}]", str(exc), "write e.g. `tp * pp <= devices`"
            ) from None
    return parsed


def expand_grid(
    grid: GridSpec, source: str, devices_per_node: int, check_models: bool = True
) -> GridExpansion:
    """Every point of the grid, filtered, as validated experiments checked against vLLM."""
    filters = _filters(grid, source)
    devices = devices_per_node * grid.nodes
    expansion = GridExpansion(source, devices_per_node, devices)
    template = grid.id or _default_id(grid)
    architectures = {
        m.name: model_architecture(m.name) if check_models else None for m in grid.models
    }
    seen: dict[str, str] = {}
    index = 0
    axes = [getattr(grid, axis) for axis in AXES]
    for model in grid.models:
        for point in itertools.product(*axes):
            values: dict[str, Any] = dict(zip(AXES, point, strict=True))
            world = values["tp"] * values["pp"] * values["dp"]
            scope = {
                **values,
                "world_size": world,
                "devices": devices,
                "devices_per_node": devices_per_node,
                "nodes": grid.nodes,
            }
            failing = next((f.text for f in filters if not f.holds(scope)), None)
            label = f"{model.short()} " + " ".join(f"{k}={v}" for k, v in values.items())
            if failing is not None:
                expansion.filtered.append((label, failing))
                continue
            index += 1
            names = {
                **values,
                "index": index,
                "model": model.short(),
                "precision": model.precision,
                "world_size": world,
            }
            config = _experiment(grid, model, values, names, template, source)
            if config.experiment_id in seen:
                raise grid_error(
                    source,
                    "id",
                    f"{label} and {seen[config.experiment_id]} both get the id "
                    f"{config.experiment_id!r}",
                    "put every axis that varies into the id template, e.g. {tp} and {dp}",
                )
            seen[config.experiment_id] = label
            plan = plan_for_vllm(config, architectures[model.name])
            if plan.runnable:
                expansion.experiments.append(GridExperiment(config, plan))
            else:
                expansion.refused.append((config.experiment_id, plan.refusals))
    return expansion


def _experiment(
    grid: GridSpec,
    model: GridModel,
    values: dict[str, Any],
    names: dict[str, Any],
    template: str,
    source: str,
) -> ExperimentConfig:
    experiment_id = _fill(template, names, source, "id")
    data = {
        "experiment_id": experiment_id,
        "description": _fill(grid.description, names, source, "description"),
        "model": {"name": model.name, "precision": model.precision},
        "parallelism": {
            "tp": values["tp"],
            "pp": values["pp"],
            "dp_replicate": values["dp"],
            "ep": values["ep"],
        },
        "data": {k: values[k] for k in ("batch_size", "seq_len", "max_tokens")},
        "warmup_iterations": grid.warmup_iterations,
        "timed_iterations": grid.timed_iterations,
        "profile_iterations": grid.profile_iterations,
        "output_dir": experiment_id,
    }
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fix = (
            "change the id template so ids use letters, digits, '.', '_' and '-' only"
            if where == "experiment_id"
            else "fix the grid value that sets it"
        )
        raise grid_error(
            source,
            "id" if where == "experiment_id" else where,
            f"{first['msg']} (experiment {experiment_id!r})",
            fix,
        ) from None


def config_text(experiment: GridExperiment, source: str) -> str:
    """The config file: a header saying where it came from and what vLLM is given, then the
    config as `load_experiment` reads it."""
    args = ", ".join(f"{k}={v}" for k, v in experiment.vllm.engine_args.items())
    header = [
        f"# Written by `hpcinfer profile grid` from {source}.",
        f"# vLLM engine arguments of this plan: {args}.",
        *(f"# note: {note}" for note in experiment.vllm.notes),
    ]
    body = yaml.safe_dump(experiment.config.model_dump(mode="json"), sort_keys=False)
    return "\n".join(header) + "\n" + body


def write_experiments(expansion: GridExpansion, out_dir: Path) -> list[Path]:
    """`out_dir/<experiment_id>.yaml` per experiment (atomically); the paths written."""
    from hpcinfer.outputs.atomic import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for experiment in expansion.experiments:
        path = out_dir / f"{experiment.config.experiment_id}.yaml"
        write_text_atomic(path, config_text(experiment, expansion.source))
        written.append(path)
    return written
