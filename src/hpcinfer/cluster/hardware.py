"""Hardware profiles: what one node of a machine offers, written down once in YAML.

A profile lets placement work on a login node or a laptop exactly as on the compute node
(and lets users override detection when a machine lies about itself). Shipped profiles
live in ``cluster/profiles/*.yaml``; a user may pass a path to their own file instead.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpcinfer.errors import HardwareError
from hpcinfer.job_script_spec import Scheduler

_PROFILE_SUFFIX = ".yaml"


class JobEnvironment(BaseModel):
    """Site defaults for the environment block of job scripts that `hpcinfer submit` writes.

    They sit in the profile because they belong to the machine (Aurora needs its frameworks
    module and the ALCF proxy whoever runs there); a spec's `job:` section adds to them.
    """

    model_config = ConfigDict(extra="forbid")

    scheduler: Scheduler | None = Field(
        default=None, description="The machine's batch scheduler, used when none is given."
    )
    modules: list[str] = Field(default_factory=list, description="`module load` each, in order.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Variables exported in the job script (no secrets)."
    )
    proxy: str | None = Field(
        default=None, description="HTTP(S) proxy URL for http_proxy/https_proxy and upper case."
    )
    no_proxy: str | None = Field(
        default=None, description="Hosts that bypass the proxy (no_proxy/NO_PROXY)."
    )
    setup: list[str] = Field(
        default_factory=list, description="Extra shell lines run before hpcinfer starts."
    )


class HardwareProfile(BaseModel):
    """One node's accelerators, how to address them, and the figures reports need."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    vendor: Literal["intel", "nvidia", "amd", "cpu"]
    device_type: Literal["gpu", "npu"] = Field(
        default="gpu",
        description="What the vendor's devices are: npu for neural processing units (AMD "
        "XDNA), which vLLM has no backend for, so run and serve refuse to place work on them.",
    )
    gpus_per_node: int = Field(default=0, ge=0, description="Devices per node (GPUs or NPUs).")
    tiles_per_gpu: int = Field(default=1, ge=1)
    flat_hierarchy: bool = False
    cores_per_node: int | None = Field(default=None, ge=1)
    accelerator: str = ""
    peak_tflops_bf16: float | None = Field(default=None, gt=0)
    memory_gib_per_device: float | None = Field(default=None, gt=0)
    network_topology: str | None = Field(
        default=None,
        description="How the devices connect, within and between nodes (the CCL-Bench "
        "workload card's network_topo); None where the profile does not say.",
    )
    network_interface: str | None = Field(
        default=None,
        description="The interface nodes reach each other on (the high-speed network, e.g. "
        "hsn0): Ray's node address and vLLM's VLLM_HOST_IP/GLOO_SOCKET_IFNAME come from it; "
        "None: the address the host name resolves to.",
    )
    env: dict[str, str] = Field(default_factory=dict)
    job_env: JobEnvironment | None = Field(
        default=None, description="Site defaults for job scripts (hpcinfer submit)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        """Reject profiles whose device count or addressing cannot be meant."""
        if self.vendor == "cpu":
            if self.gpus_per_node != 0:
                raise ValueError("a cpu profile has gpus_per_node: 0 (cores are its devices)")
            if self.tiles_per_gpu != 1:
                raise ValueError("a cpu profile has no tiles; drop tiles_per_gpu")
        elif self.gpus_per_node < 1:
            raise ValueError(f"a {self.vendor} profile needs gpus_per_node >= 1")
        if self.device_type == "npu" and self.vendor == "cpu":
            raise ValueError("device_type npu needs the NPU's vendor (e.g. amd), not cpu")
        if self.flat_hierarchy and self.vendor != "intel":
            raise ValueError("flat_hierarchy is an Intel Level Zero setting; only vendor intel")
        return self

    @property
    def has_vllm_backend(self) -> bool:
        """False for NPUs: no vLLM backend drives them (the CPU build runs on the cores)."""
        return self.device_type != "npu"

    @property
    def is_cpu(self) -> bool:
        """True when cores, not GPUs, are the schedulable devices."""
        return self.vendor == "cpu"

    def core_ids(self) -> list[int]:
        """Core ids a cpu profile schedules on: 0..n-1 if fixed, else this process's cpuset.

        The detected set keeps real ids, so a job confined to cores 8-15 binds to 8-15.
        """
        if self.cores_per_node is not None:
            return list(range(self.cores_per_node))
        return sorted(os.sched_getaffinity(0))

    @property
    def devices_per_node(self) -> int:
        """Schedulable units on one node: tiles (or GPUs), or cores for a cpu profile."""
        if self.is_cpu:
            return len(self.core_ids())
        return self.gpus_per_node * self.tiles_per_gpu


def _profiles_dir() -> Any:
    """The shipped profiles folder, read through importlib.resources (works from a wheel)."""
    return resources.files("hpcinfer.cluster").joinpath("profiles")


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(
        entry.name[: -len(_PROFILE_SUFFIX)]
        for entry in _profiles_dir().iterdir()
        if entry.name.endswith(_PROFILE_SUFFIX)
    )


def invalid_fields(exc: ValidationError, *, bare_value_errors: bool = False) -> str:
    """One indented line per pydantic error, led by the field path, so the user can find the
    key; `bare_value_errors` drops pydantic's "Value error, " prefix where the validators'
    own messages say what to write instead (the cluster file's)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = str(err["msg"])
        if bare_value_errors:
            message = message.removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _parse(text: str, source: str, default_name: str) -> HardwareProfile:
    """Turn YAML text into a profile; every failure becomes a HardwareError naming source."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HardwareError(f"hardware profile {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HardwareError(
            f"hardware profile {source} must be a YAML mapping of fields "
            f"(name, vendor, gpus_per_node, ...), got {type(data).__name__}"
        )
    data.setdefault("name", default_name)
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise HardwareError(
            f"hardware profile {source} is invalid:\n" + invalid_fields(exc)
        ) from exc


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".yaml", ".yml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A shipped profile by name, or a user's YAML file by path."""
    known = list_profiles()
    if name_or_path in known:
        text = _profiles_dir().joinpath(name_or_path + _PROFILE_SUFFIX).read_text("utf-8")
        return _parse(text, f"'{name_or_path}'", name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise HardwareError(f"cannot read hardware profile {path}: {exc}") from exc
        return _parse(text, str(path), path.stem)
    if _looks_like_path(name_or_path):
        raise HardwareError(
            f"hardware profile file {path} does not exist; "
            f"give an existing YAML file or one of: {', '.join(known)}"
        )
    raise HardwareError(
        f"unknown hardware profile '{name_or_path}'; known profiles: {', '.join(known)} "
        "(or give a path to your own YAML file, or 'auto' to detect)"
    )
