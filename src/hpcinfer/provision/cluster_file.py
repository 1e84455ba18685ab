"""The cluster file: one versioned YAML description of a cluster of one's own.

Name and version, the control node, the compute nodes (name, address, MAC), each node's
hardware profile, the login the tools use, the Python environment on the nodes and the Ray
and vLLM versions to pin. Everything else (the Ansible inventory, group variables, the
description) is rendered from it, so it is the one place a node or a version is written.
Validated as the job spec is: unknown keys are refused, and each error names the file, the
field and what to write instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from hpcinfer.cluster.hardware import invalid_fields
from hpcinfer.errors import SpecError
from hpcinfer.provision import values


def _text_version(value: Any) -> Any:
    """YAML reads `0.1` as a float (and `0.10` as 0.1): refuse numbers with the fix."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'{value} was read as a number; write it quoted, e.g. version: "{value}"')
    return value


HostName = Annotated[str, AfterValidator(values.host_name)]
Address = Annotated[str, AfterValidator(values.address)]
User = Annotated[str, AfterValidator(values.user)]
Mac = Annotated[str, AfterValidator(values.mac)]
AbsolutePath = Annotated[str, AfterValidator(values.absolute_path)]
Interface = Annotated[str, AfterValidator(values.interface)]
Version = Annotated[str, BeforeValidator(_text_version), AfterValidator(values.version)]
PythonVersion = Annotated[str, BeforeValidator(_text_version), Field(pattern=r"^3\.\d{1,2}$")]
ClusterVersion = Annotated[str, BeforeValidator(_text_version), Field(pattern=r"^\d+(\.\d+){0,2}$")]
Slug = Annotated[str, AfterValidator(values.slug)]
GitUrl = Annotated[str, AfterValidator(values.git_url)]
GitRef = Annotated[str, AfterValidator(values.git_ref)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Node(_Strict):
    """One machine of the cluster, as Ansible and hpcinfer reach it."""

    name: HostName = Field(description="Inventory name and host name, e.g. compute0.")
    address: Address = Field(description="The address the control node reaches it on.")
    mac: Mac | None = Field(default=None, description="The MAC address it PXE boots from.")
    hardware: str = Field(
        default="cpu",
        min_length=1,
        description="A hardware profile: a shipped name (arc-a770, cpu, ...) or a YAML path, "
        "relative to the cluster file.",
    )
    interface: Interface | None = Field(
        default=None, description="The network interface on the cluster link (e.g. enp5s0)."
    )
    user: User | None = Field(default=None, description="This node's login, if not remote_user.")


class PythonEnv(_Strict):
    """Where hpcinfer, Ray and vLLM are installed on every node."""

    venv: AbsolutePath = Field(description="The virtual environment, e.g. /opt/venvs/cluster.")
    version: PythonVersion = Field(description='The Python it is made with, e.g. "3.12".')


class RayPin(_Strict):
    """One Ray version on every node: Ray refuses a worker of another version."""

    version: Version


class GitSource(_Strict):
    """vLLM built from a repository (e.g. a vendor branch); a commit id pins it exactly."""

    url: GitUrl
    ref: GitRef


class VllmPin(_Strict):
    """The vLLM to install on the nodes: a released version, or a build from git."""

    version: Version | None = None
    git: GitSource | None = None
    oneapi_setvars: AbsolutePath = Field(
        default="/opt/intel/oneapi/setvars.sh",
        description="Intel oneAPI's environment script, sourced for XPU builds.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> VllmPin:
        if (self.version is None) == (self.git is None):
            raise ValueError(
                "give exactly one of version (a release, e.g. 0.11.1) or git (url and ref)"
            )
        return self


class ClusterFile(_Strict):
    """A cluster of one's own, one version of its hardware."""

    name: Slug
    version: ClusterVersion
    description: str = ""
    remote_user: User = Field(
        description="The login Ansible and hpcinfer use on the nodes (ansible_user)."
    )
    python: PythonEnv
    ray: RayPin
    vllm: VllmPin | None = Field(
        default=None, description="The vLLM to install; leave out where none can run."
    )
    control: Node
    compute: list[Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_nodes(self) -> ClusterFile:
        """Two nodes with one name, address or MAC would make the inventory lie."""
        nodes = [self.control, *self.compute]
        for what in ("name", "address", "mac"):
            seen: set[str] = set()
            for node in nodes:
                value = getattr(node, what)
                if value is not None and value in seen:
                    raise ValueError(f"two nodes have {what} {value}; each node needs its own")
                seen.add(value)
        missing = [n.name for n in self.compute if n.mac is None]
        if missing:
            raise ValueError(
                f"compute node(s) {', '.join(missing)} have no mac; compute nodes PXE boot "
                "from the control node, so write each one's MAC address"
            )
        return self

    @property
    def label(self) -> str:
        """How commands and files name this cluster: NAME@VERSION."""
        return f"{self.name}@{self.version}"

    @property
    def nodes(self) -> list[Node]:
        return [self.control, *self.compute]


def parse_cluster_file(text: str, source: str) -> ClusterFile:
    """A validated ClusterFile from YAML text; every failure is a SpecError naming source."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"cluster file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(
            f"cluster file {source} must be a YAML mapping (name, version, remote_user, python, "
            f"ray, control, compute), got {type(data).__name__}"
        )
    try:
        return ClusterFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"cluster file {source} is invalid:\n" + invalid_fields(exc, bare_value_errors=True)
        ) from exc


def read_cluster_file(path: Path) -> ClusterFile:
    """A user's cluster file from disk."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read cluster file {path}: {exc.strerror or exc}") from exc
    return parse_cluster_file(text, str(path))
