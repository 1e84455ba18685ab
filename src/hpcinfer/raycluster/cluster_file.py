"""The record of a running cluster, and where later commands find it.

`hpcinfer ray up` writes it once the cluster is verified; `ray status`, `ray down`,
`serve --backend ray` and `run --launcher ray` read it. It lives in the home directory
(`~/.hpcinfer/ray/<name>.json`), which every node of a job shares, unless
`$HPCINFER_RAY_CLUSTER` names the file. The name is `--name`, else the scheduler's job id
(so the commands of one job script agree without being told), else "local".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hpcinfer.core.documents import read_document
from hpcinfer.errors import InputError, SpecError
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.raycluster.ports import RayPorts

CLUSTER_FILE_ENV = "HPCINFER_RAY_CLUSTER"
JOB_ID_ENV = ("PBS_JOBID", "SLURM_JOB_ID", "SLURM_JOBID")
LOCAL_NAME = "local"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

Launcher = Literal["ssh", "mpi", "srun", "local"]


class RayNodeRecord(BaseModel):
    """One node of the cluster as it joined: the allocation's host name, Ray's address."""

    model_config = ConfigDict(extra="forbid")

    host: str
    address: str = Field(description="The node's IP address, on the chosen interface.")
    gpus: float
    cpus: float
    temp_dir: str = Field(description="Ray's --temp-dir on that node (its own folder).")
    head: bool = False


class RayClusterFile(BaseModel):
    """A running cluster: enough to reach it, check it and take it down."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str
    address: str = Field(description="The GCS address, ip:port: `ray.init(address=...)`.")
    cluster_id: str | None = Field(
        default=None, description="Ray's cluster id (hex); a reader that knows it connects faster."
    )
    head_host: str
    nodes: list[RayNodeRecord]
    gpus_per_node: int
    cpus_per_node: int | None = None
    ports: RayPorts
    temp_root: str = Field(description="The cluster's temp root; node folders are below it.")
    interface: str | None = None
    launcher: Launcher
    created_at: str

    @property
    def hosts(self) -> list[str]:
        """The nodes' host names, head first (the allocation's order)."""
        return [node.host for node in self.nodes]

    def gcs_host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host, int(port)


def now_text() -> str:
    """The creation time as the file writes it (UTC, ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """A cluster name usable in a file name and a Ray label (job ids qualify)."""
    if not _NAME.fullmatch(name):
        raise SpecError(
            f"cluster name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. --name llama405b)"
        )
    return name


def default_cluster_name(env: Mapping[str, str] | None = None) -> str:
    """The job id (PBS_JOBID, SLURM_JOB_ID), sanitised, else "local"."""
    env = os.environ if env is None else env
    for key in JOB_ID_ENV:
        value = env.get(key, "").strip()
        if value:
            return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:63].lstrip("._-") or LOCAL_NAME
    return LOCAL_NAME


def default_cluster_file(name: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """`$HPCINFER_RAY_CLUSTER` if set, else `~/.hpcinfer/ray/<name>.json` (name: `name`, else
    the job id, else "local")."""
    env = os.environ if env is None else env
    explicit = env.get(CLUSTER_FILE_ENV, "").strip()
    if explicit and name is None:
        return Path(explicit).expanduser()
    chosen = check_name(name) if name is not None else default_cluster_name(env)
    home = Path(env.get("HOME") or Path.home())
    return home / ".hpcinfer" / "ray" / f"{chosen}.json"


def cluster_path(
    path: Path | str | None, name: str | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The cluster file a command means: `path` if given, else `default_cluster_file(name)`."""
    if path is not None:
        return Path(path).expanduser()
    return default_cluster_file(name, env)


def load_cluster(
    path: Path | str | None = None, name: str | None = None, env: Mapping[str, str] | None = None
) -> RayClusterFile:
    """The cluster recorded at `path` (None: the default file); InputError when it is
    missing or not a cluster file, naming the file and how to make one."""
    where = cluster_path(path, name, env)
    if not where.is_file():
        raise InputError(
            f"no Ray cluster file at {where}: start one with `hpcinfer ray up` (with the same "
            "--name), or pass --cluster-file / set $HPCINFER_RAY_CLUSTER"
        )
    return read_document(where, RayClusterFile, "Ray cluster file")


def launch_log_dir(path: Path) -> Path:
    """Beside the cluster file: the logs of the launches that run the node commands (kept
    while a blocking launcher's commands run, for `ray down` to remove)."""
    return path.with_name(path.name + ".logs")


def save_cluster(cluster: RayClusterFile, path: Path) -> Path:
    """Write the cluster file atomically (a reader sees the whole record or none)."""
    write_text_atomic(path, cluster.model_dump_json(indent=1) + "\n")
    return path
