"""The cluster file: one versioned YAML description of a cluster of one's own.

Name and version, the control node, the compute nodes (name, address, MAC), each node's
hardware profile, the login the tools use, the Python environment on the nodes (and the
wheelhouse of air-gapped ones), the Ray and vLLM versions to pin, vLLM's reproducible check
and the optional server on the control node. Everything else (the Ansible inventory, group
variables, the description) is rendered from it, so it is the one place a node or a version
is written.
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
Workdir = Annotated[str, AfterValidator(values.workdir)]
Interface = Annotated[str, AfterValidator(values.interface)]
Version = Annotated[str, BeforeValidator(_text_version), AfterValidator(values.version)]
PythonVersion = Annotated[str, BeforeValidator(_text_version), Field(pattern=r"^3\.\d{1,2}$")]
ClusterVersion = Annotated[str, BeforeValidator(_text_version), Field(pattern=r"^\d+(\.\d+){0,2}$")]
Slug = Annotated[str, AfterValidator(values.slug)]
GitUrl = Annotated[str, AfterValidator(values.git_url)]
GitRef = Annotated[str, AfterValidator(values.git_ref)]
Model = Annotated[str, AfterValidator(values.model)]
Prompt = Annotated[str, AfterValidator(values.prompt)]

VERIFY_MODEL = "shuyuej/gemma-2b-it-GPTQ"
VERIFY_PROMPT = "The capital of France is"
VERIFY_MAX_TOKENS = 16
SERVER_PORT = 8000


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


class ControlNode(Node):
    """The control node: where Ansible runs, the Ray head and the vLLM server."""

    workdir: Workdir | None = Field(
        default=None,
        description="Where `hpcinfer cluster sync` puts the project on the control node "
        "(default: hpcinfer under the login's home).",
    )


class PythonEnv(_Strict):
    """Where hpcinfer, Ray and vLLM are installed on every node."""

    venv: AbsolutePath = Field(description="The virtual environment, e.g. /opt/venvs/cluster.")
    version: PythonVersion = Field(description='The Python it is made with, e.g. "3.12".')
    wheelhouse: AbsolutePath | None = Field(
        default=None,
        description="A folder of wheels every node can read; pip then installs from it alone "
        "(--no-index --find-links): nodes without internet access.",
    )


class RayPin(_Strict):
    """One Ray version on every node: Ray refuses a worker of another version."""

    version: Version


class GitSource(_Strict):
    """vLLM built from a repository (e.g. a vendor branch); a commit id pins it exactly."""

    url: GitUrl
    ref: GitRef


class VllmVerify(_Strict):
    """The reproducible check of vLLM on every compute node: one prompt at temperature 0 with a
    fixed seed, whose answer is recorded by the first verify and must recur."""

    model: Model = Field(default=VERIFY_MODEL, description="ORG/NAME or a model folder.")
    prompt: Prompt = VERIFY_PROMPT
    max_tokens: int = Field(default=VERIFY_MAX_TOKENS, ge=1, le=4096)


class VllmPin(_Strict):
    """The vLLM to install on the nodes: a released version, or a build from git."""

    version: Version | None = None
    git: GitSource | None = None
    oneapi_setvars: AbsolutePath = Field(
        default="/opt/intel/oneapi/setvars.sh",
        description="Intel oneAPI's environment script, sourced for XPU builds.",
    )
    verify: VllmVerify = Field(default_factory=VllmVerify)

    @model_validator(mode="after")
    def _one_source(self) -> VllmPin:
        if (self.version is None) == (self.git is None):
            raise ValueError(
                "give exactly one of version (a release, e.g. 0.11.1) or git (url and ref)"
            )
        return self


class Server(_Strict):
    """The vLLM server on the control node (`hpcinfer serve`), over every compute device."""

    model: Model = Field(description="ORG/NAME or a model folder every compute node can read.")
    port: int = Field(default=SERVER_PORT, ge=1, le=65535)
    max_model_len: int | None = Field(default=None, ge=16)
    shared_dir: AbsolutePath | None = Field(
        default=None,
        description="A folder every node shares (e.g. the NFS root PXE-booted nodes mount): "
        "the server's registry; needed where the compute nodes run vLLM's CPU build.",
    )


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
    server: Server | None = Field(
        default=None, description="A vLLM server on the control node; leave out for none."
    )
    control: ControlNode
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

    @model_validator(mode="after")
    def _server_needs_vllm(self) -> ClusterFile:
        if self.server is not None and self.vllm is None:
            raise ValueError(
                "server: needs a vllm: section (the server runs the vLLM installed on the "
                "compute nodes); add vllm: or remove server:"
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
