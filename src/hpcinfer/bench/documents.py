"""The benchmark result documents (`<kind>.json`, see bench.results) as typed models.

They describe the files as written (so `hpcinfer report` and a library caller can validate
and read them); figures a run could not measure are null, and fields a later version adds
are kept (`extra="allow"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpcinfer.core.documents import validate_document

Number = float | None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResultEnvelope(_Open):
    """What every result file holds around its benchmark's own body."""

    kind: Literal["offline", "serve", "fom"]
    hpcinfer_version: str | None = None
    created: str | None = None
    command: list[str] = Field(default_factory=list)
    """The command line the caller recorded (the CLI's argv, secrets masked); empty from
    a library call."""
    config: dict[str, Any] = Field(default_factory=dict)


class ServeLoad(_Open):
    mode: str | None = None
    rate: Number = None
    burstiness: Number = None
    max_concurrency: int | None = None
    requests: int | None = None
    description: str | None = None
    role: str | None = None
    """In a sweep to saturation: synchronous, throughput or rate (absent otherwise)."""


class ServeRun(_Open):
    """One point of a sweep: its load, vLLM-keyed figures, server counters, errors."""

    label: str | None = None
    load: ServeLoad = Field(default_factory=ServeLoad)
    metrics: dict[str, Any]
    server_metrics: dict[str, Any] | None = None
    errors: dict[str, int] = Field(default_factory=dict)


class ServeKnee(_Open):
    """Where latency turned (bench.sweep.find_knee): the highest rate that kept the rule,
    and the first rate that broke it with the figures over their limits."""

    rate: Number = None
    label: str | None = None
    turned_at: dict[str, Any] | None = None
    criterion: str | None = None
    limits: dict[str, float] = Field(default_factory=dict)


class ServeSweep(_Open):
    """A sweep to saturation's plan (`--sweep N`) and its knee."""

    profile: str = "sweep"
    arrivals: str | None = None
    synchronous_rate: Number = None
    throughput_rate: Number = None
    rates: list[float] = Field(default_factory=list)
    knee: ServeKnee | None = None


class ServeDocument(ResultEnvelope):
    kind: Literal["serve"] = "serve"
    runs: list[ServeRun]
    sweep: ServeSweep | None = None


class CaseFigures(_Open):
    """The figures of one batch shape (offline's `result`, each of fom's `cases`)."""

    name: str | None = None
    input_len: int | None = None
    output_len: int | None = None
    batch_size: int | None = None
    max_model_len: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    throughput: Number = None
    prefill_tokens_per_s: Number = None
    decode_tokens_per_s: Number = None
    flops_per_s: Number = None
    mfu: Number = None
    iterations_s: list[float] = Field(default_factory=list)


class OfflineFigures(CaseFigures):
    latency_s: dict[str, Any] = Field(default_factory=dict)
    """mean, median, std and the percentiles (p50, p99, ...), seconds."""


class OfflineDocument(ResultEnvelope):
    kind: Literal["offline"] = "offline"
    result: OfflineFigures


class FomCaseFigures(CaseFigures):
    latency_s: Number = None
    """The mean over the timed iterations (the statistics are in latency_stats)."""
    latency_stats: dict[str, Any] = Field(default_factory=dict)


class FomTotal(_Open):
    throughput: Number = None
    flops_per_s: Number = None
    cases: list[str] = Field(default_factory=list)


class FomDocument(ResultEnvelope):
    kind: Literal["fom"] = "fom"
    cases: list[FomCaseFigures]
    fom: FomTotal | None = None
    engines: list[dict[str, Any]] = Field(default_factory=list)


BenchDocument = ServeDocument | OfflineDocument | FomDocument
MODELS: dict[str, type[ServeDocument] | type[OfflineDocument] | type[FomDocument]] = {
    "serve": ServeDocument,
    "offline": OfflineDocument,
    "fom": FomDocument,
}


def validate_result(path: Path, data: Any) -> BenchDocument:
    """A result file's content as its kind's model; InputError naming the file and field."""
    kind = data.get("kind") if isinstance(data, dict) else None
    model = MODELS.get(str(kind))
    if model is None:
        return validate_document(path, data, ResultEnvelope, "benchmark result")  # type: ignore[return-value]
    return validate_document(path, data, model, f"{kind} result")
