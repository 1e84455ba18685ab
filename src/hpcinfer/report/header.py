"""The top of the report: what each result file measured, when, with which hpcinfer and
command line, and its configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpcinfer.report.values import NA, command_line, flatten, show_value

_MODEL_KEYS = ("model", "served_model_name", "model_name")
_MEASURED = {
    "serve": "serving: latency and throughput of OpenAI-compatible servers under load",
    "offline": "offline: the in-process engine's throughput and latency",
    "fom": "figure of merit: FOM1 + FOM2 + FOM3",
}


@dataclass(frozen=True)
class RunInfo:
    """One result file's provenance."""

    kind: str
    file: str
    measured: str
    created: str
    version: str
    command: str
    config: tuple[tuple[str, str], ...]


def model_name(config: Any) -> str | None:
    """The model a benchmark ran, when its config names it."""
    if not isinstance(config, Mapping):
        return None
    for key in _MODEL_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def when(created: Any) -> str:
    """ISO 8601 as '2025-01-31 14:05:09 UTC'; anything else as written."""
    if not isinstance(created, str) or not created:
        return NA
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return created
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def run_info(path: Path, document: Mapping[str, Any]) -> RunInfo:
    config = document.get("config")
    measured = _MEASURED.get(str(document.get("kind")), str(document.get("kind")))
    model = model_name(config)
    if model:
        measured += f"; model {model}"
    return RunInfo(
        kind=str(document.get("kind")),
        file=path.name,
        measured=measured,
        created=when(document.get("created")),
        version=str(document.get("hpcinfer_version") or NA),
        command=command_line(document.get("command")),
        config=tuple(
            (name, show_value(value))
            for name, value in (flatten(config) if isinstance(config, Mapping) else [])
        ),
    )
