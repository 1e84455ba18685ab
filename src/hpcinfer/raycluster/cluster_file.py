"""The record of a running cluster, and where later commands find it.

`hpcinfer ray up` creates it before it starts anything (state "starting": enough for `ray
down` to stop what a killed `up` left) and marks it "ready" once the cluster is verified;
`ray status`, `ray down`,
`serve --backend ray` and `run --launcher ray` read it. It lives in the home directory
(`~/.hpcinfer/ray/<name>.json`), which every node of a job shares, unless
`$HPCINFER_RAY_CLUSTER` names the file. The name is `--name`, else the scheduler's job id
(so the commands of one job script agree without being told), else "local".
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcinfer.core.documents import read_document
from hpcinfer.errors import InputError, RayClusterError, SpecError
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.raycluster.ports import RayPorts

CLUSTER_FILE_ENV = "HPCINFER_RAY_CLUSTER"
JOB_ID_ENV = ("PBS_JOBID", "SLURM_JOB_ID", "SLURM_JOBID")
LOCAL_NAME = "local"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

Launcher = Literal["ssh", "mpi", "srun", "local"]
ClusterState = Literal["starting", "ready"]


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
    state: ClusterState = Field(
        default="ready",
        description='"starting" while `ray up` runs (or after it was killed): only `ray down` '
        'uses such a file; "ready" once the cluster is verified.',
    )
    address: str = Field(
        description='The GCS address, ip:port: `ray.init(address=...)` ("" while starting).'
    )
    cluster_id: str | None = Field(
        default=None, description="Ray's cluster id (hex); a reader that knows it connects faster."
    )
    head_host: str
    nodes: list[RayNodeRecord]
    planned_hosts: list[str] = Field(
        default_factory=list,
        description="Every host `ray up` starts Ray on, head first (what `ray down` stops "
        "while the cluster is starting and `nodes` is still empty).",
    )
    gpus_per_node: int
    head_gpus: int | None = Field(
        default=None,
        description="GPUs the head declares when they differ from gpus_per_node (a control "
        "node with no GPU: 0); None: gpus_per_node.",
    )
    cpus_per_node: int | None = None
    ports: RayPorts
    temp_root: str = Field(description="The cluster's temp root; node folders are below it.")
    interface: str | None = None
    launcher: Launcher
    created_at: str

    @model_validator(mode="after")
    def _ready_has_its_nodes(self) -> RayClusterFile:
        if self.state == "ready" and not self.address:
            raise ValueError("a ready cluster needs its address (ip:port)")
        if self.state == "starting" and not self.hosts:
            raise ValueError("a starting cluster needs its planned_hosts")
        return self

    @property
    def hosts(self) -> list[str]:
        """The nodes' host names, head first (the allocation's order)."""
        return [node.host for node in self.nodes] or list(self.planned_hosts)

    @property
    def gpu_hosts(self) -> list[str]:
        """The hosts whose GPUs servers use: all of them, less a head that declares none (a
        cluster of one's own, whose control node is the head)."""
        if self.head_gpus == 0 and self.gpus_per_node > 0:
            return [host for host in self.hosts if host != self.head_host]
        return self.hosts

    @property
    def driver_on_head(self) -> bool:
        """Whether servers' API processes (Ray's drivers) run on a GPU-less head rather than
        on their first GPU node."""
        return self.gpu_hosts != self.hosts


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
    path: Path | str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    starting_ok: bool = False,
) -> RayClusterFile:
    """The cluster recorded at `path` (None: the default file); InputError when it is
    missing or not a cluster file, naming the file and how to make one, or when its cluster
    is still starting (unless `starting_ok`: `ray down`)."""
    where = cluster_path(path, name, env)
    if not where.is_file():
        raise InputError(
            f"no Ray cluster file at {where}: start one with `hpcinfer ray up` (with the same "
            "--name), or pass --cluster-file / set $HPCINFER_RAY_CLUSTER"
        )
    cluster = read_document(where, RayClusterFile, "Ray cluster file")
    if cluster.state != "ready" and not starting_ok:
        raise InputError(
            f"the Ray cluster in {where} is still starting (or its `hpcinfer ray up` was "
            f"killed): wait for `ray up` to finish, or take it down: hpcinfer ray down "
            f"--cluster-file {where}"
        )
    return cluster


def launch_log_dir(path: Path) -> Path:
    """Beside the cluster file: the logs of the launches that run the node commands (kept
    while a blocking launcher's commands run, for `ray down` to remove)."""
    return path.with_name(path.name + ".logs")


def create_cluster(cluster: RayClusterFile, path: Path, down_hint: str) -> Path:
    """Create the cluster file atomically and exclusively: a reader sees the whole record
    or none, and a second `ray up` of the same file is refused (RayClusterError naming the file
    and the `ray down` that frees it, `down_hint` its option)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(cluster.model_dump_json(indent=1) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # fails when the file exists: O_EXCL for a whole file
        except FileExistsError:
            raise RayClusterError(
                f"a Ray cluster is already recorded in {path}: take it down first "
                f"({f'hpcinfer ray down {down_hint}'.rstrip()}), or pass another --name"
            ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return path


def save_cluster(cluster: RayClusterFile, path: Path) -> Path:
    """Write the cluster file atomically (a reader sees the whole record or none)."""
    write_text_atomic(path, cluster.model_dump_json(indent=1) + "\n")
    return path
