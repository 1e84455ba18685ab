"""The `job:` section of the job spec: what a batch job script asks the scheduler for.

Part of the spec layer (beside hpcinfer.spec), so reading a spec needs nothing from the
`submit` command that renders the script.

Not part of a run's identity: changing the walltime or the node count and submitting again
resumes the same results. Values are checked here for what can be checked without knowing
the scheduler; `render` checks which options the chosen scheduler takes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcinfer import script_values as checks
from hpcinfer.core.durations import parse_walltime
from hpcinfer.errors import SpecError

Scheduler = Literal["pbs", "slurm"]
"""The one list of scheduler names a spec's `job.scheduler` and a hardware profile's
`job_env.scheduler` take, so a typo fails when the file is read, not at submit time.

Written here, not derived from the registry (submit.schedulers), because the spec layer and
the hardware profiles stand below `submit`: reading a spec must not import the command that
renders scripts. A unit test keeps this list and the registered schedulers the same."""

DEFAULT_PASS_ENV = ["HF_TOKEN", "HF_HOME", "HPCINFER_CACHE"]


def _default_pass_env() -> list[str]:
    return list(DEFAULT_PASS_ENV)


def _as_value_error(exc: SpecError) -> ValueError:
    """pydantic collects ValueErrors (with the field path); SpecError would bypass it."""
    return ValueError(str(exc))


class JobScriptSpec(BaseModel):
    """Scheduler request and environment for `hpcinfer submit` (not part of a run's identity)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    scheduler: Scheduler | None = Field(
        None,
        description="'pbs' or 'slurm'; default: the hardware profile's, else whichever of "
        "qsub/sbatch is on PATH.",
    )
    nodes: int = Field(1, ge=1, description="Nodes to request.")
    ranks_per_node: int | None = Field(
        None,
        ge=1,
        description="hpcinfer ranks per node; default: one per device group of the hardware "
        "profile (workers.count, engine.tensor_parallel_size).",
    )
    walltime: str | None = Field(
        None, description="Time limit: '01:00:00', '1-00:00:00', '90m', '2h'; default: the queue's."
    )
    account: str | None = Field(None, description="Project to charge (PBS -A, Slurm --account).")
    queue: str | None = Field(
        None, description="PBS queue (-q); on Slurm the partition, when partition is unset."
    )
    partition: str | None = Field(None, description="Slurm partition (--partition).")
    qos: str | None = Field(None, description="Slurm quality of service (--qos).")
    constraint: str | None = Field(
        None, description="Slurm node features (--constraint), e.g. 'gpu' or 'gpu&hbm80g'."
    )
    gpus_per_node: int | None = Field(
        None,
        ge=0,
        description="Slurm --gpus-per-node; default: the profile's GPUs per node (0: omit).",
    )
    filesystems: list[str] = Field(
        default_factory=list,
        description="PBS -l filesystems=..., e.g. [home, flare] (Aurora requires it).",
    )
    name: str = Field("hpcinfer", description="Job name shown by qstat/squeue.")
    cpu_bind: str | list[str] | None = Field(
        None,
        description="Launcher CPU binding: PALS --cpu-bind ('depth', or a list of core ranges "
        "per rank, joined into list:0-7:8-15), or srun --cpu-bind ('cores').",
    )
    modules: list[str] = Field(
        default_factory=list, description="`module load` each, after the profile's modules."
    )
    venv: str | None = Field(
        None, description="Python virtual environment to activate (its hpcinfer is used)."
    )
    conda_env: str | None = Field(None, description="Conda environment (name or path) to activate.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables exported in the script (never secrets: export those in your "
        "shell and list them in pass_env).",
    )
    pass_env: list[str] = Field(
        default_factory=_default_pass_env,
        description="Variables taken from the submitting shell by name when set (qsub -v; "
        "Slurm passes the whole environment). Covers secrets such as HF_TOKEN.",
    )
    proxy: str | None = Field(
        None,
        description="HTTP(S) proxy URL: sets http_proxy, https_proxy, HTTP_PROXY, HTTPS_PROXY.",
    )
    no_proxy: str | None = Field(
        None, description="Hosts that bypass the proxy (no_proxy, NO_PROXY)."
    )
    setup: list[str] = Field(
        default_factory=list,
        description="Extra shell lines run before hpcinfer starts, as written (your own shell; "
        "an entry may span several lines).",
    )
    stage_to: str | None = Field(
        None,
        description="Node-local directory (e.g. /local/scratch/hf) the job stages the model "
        "to before the run, with `hpcinfer stage` (one rank per node); the run then reads "
        "that copy (its --model and HF_HOME are set to match).",
    )
    steps: list[str] = Field(
        default_factory=list,
        description="Shell commands the job runs instead of `hpcinfer run` on the spec, in "
        "order, as written (your own shell; an entry may span several lines); the job stops at "
        "the first that fails and exits with its code. Commands left running in the "
        "background (`hpcinfer serve ... &`) are stopped when the script exits.",
    )
    ray: bool = Field(
        False,
        description="Bring up a Ray cluster over the job's nodes before the run or the steps "
        "(`hpcinfer ray up`, its file in $HPCINFER_RAY_CLUSTER) and take it down when the "
        "script exits, also on failure, qdel/scancel or the walltime's signal.",
    )
    ray_gpus_per_node: int | None = Field(
        None,
        ge=1,
        description="With ray: the GPUs (or tiles) each node declares to Ray (`ray up "
        "--gpus-per-node`); default: the hardware profile's on the node.",
    )
    ray_interface: str | None = Field(
        None,
        description="With ray: the network interface whose address each Ray node uses (`ray "
        "up --interface`, e.g. hsn0); default: the hardware profile's, else the address of "
        "the host name.",
    )
    resubmit: int = Field(
        0,
        ge=0,
        description="Times the job resubmits itself when hpcinfer stops before the walltime "
        "(exit 4); each new job resumes where the last stopped.",
    )
    extra_directives: list[str] = Field(
        default_factory=list,
        description="More scheduler options, one per line: '-l debug=true' (#PBS) or "
        "'--mail-type=END' (#SBATCH).",
    )

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is not None:
            parse_walltime(value)
        return value

    @field_validator("account", "queue", "partition", "qos")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        try:
            return None if value is None else checks.check_word(value, "the value")
        except SpecError as exc:
            raise _as_value_error(exc) from None

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return checks.check_word(value, "constraint", checks.CONSTRAINT)
        except SpecError as exc:
            raise _as_value_error(exc) from None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not checks.JOB_NAME.fullmatch(value):
            raise ValueError(
                f"job name {value!r}: start with a letter, then up to 62 letters, digits or . _ + -"
            )
        return value

    @field_validator("filesystems", mode="before")
    @classmethod
    def _filesystems(cls, value: object) -> object:
        """'home:flare' as PBS spells it, or a list."""
        return value.split(":") if isinstance(value, str) else value

    @field_validator("filesystems")
    @classmethod
    def _filesystem_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not checks.FILESYSTEM.fullmatch(name):
                raise ValueError(f"file system {name!r}: use letters, digits and '_' (home, flare)")
        return value

    @field_validator("cpu_bind")
    @classmethod
    def _cpu_bind(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        for item in items:
            if not item or not checks.CONSTRAINT.fullmatch(item):
                raise ValueError(
                    f"cpu_bind {item!r}: write 'depth', 'core', 'list:0-7:8-15' or a list of "
                    "core ranges such as ['0-7', '8-15']"
                )
        if isinstance(value, list) and not value:
            raise ValueError("cpu_bind is an empty list; leave it unset for the default")
        return value

    @field_validator("modules", "setup", mode="before")
    @classmethod
    def _lines(cls, value: object) -> object:
        """A YAML block (one string of lines) is as good as a list."""
        if isinstance(value, str):
            return [line for line in value.splitlines() if line.strip()]
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not module.strip() or checks.has_control(module):
                raise ValueError(f"module {module!r}: one module name per entry")
        return value

    @field_validator("setup")
    @classmethod
    def _setup(cls, value: list[str]) -> list[str]:
        if any("\0" in entry for entry in value):
            raise ValueError("a setup entry holds NUL")
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _one_step(cls, value: object) -> object:
        """A YAML block is one step (its lines may form one `if` or loop), not one per line."""
        return [value] if isinstance(value, str) else value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not entry.strip() or "\0" in entry:
                raise ValueError(f"step {entry!r}: a shell command, not blank, no NUL")
            if entry.rstrip().endswith("\\"):
                raise ValueError(
                    f"step {entry!r} ends with a line continuation ('\\'); end the command "
                    "in the entry, or write it on one line"
                )
        return value

    @field_validator("ray_interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        if value is not None and not checks.INTERFACE.fullmatch(value):
            raise ValueError(
                f"interface {value!r}: a network interface name such as hsn0, ib0 or eth0 "
                "(letters, digits and . _ : -, at most 15 characters)"
            )
        return value

    @field_validator("venv", "conda_env", "proxy", "no_proxy")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or checks.has_control(value)):
            raise ValueError(f"{value!r}: one line, not blank, no control characters")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not checks.ENV_NAME.fullmatch(name):
                raise ValueError(f"variable name {name!r}: letters, digits and '_' only")
            if "\0" in item:
                raise ValueError(f"variable {name} holds NUL")
        return value

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, value: list[str]) -> list[str]:
        for name in value:
            if not checks.ENV_NAME.fullmatch(name):
                raise ValueError(f"pass_env name {name!r}: letters, digits and '_' only")
        return list(dict.fromkeys(value))

    @field_validator("extra_directives")
    @classmethod
    def _directives(cls, value: list[str]) -> list[str]:
        cleaned = []
        for line in value:
            text = line.strip()
            for prefix in ("#PBS", "#SBATCH"):
                text = text.removeprefix(prefix).strip()
            if not text.startswith("-") or checks.has_control(text):
                raise ValueError(
                    f"extra directive {line!r}: one scheduler option per entry, starting "
                    "with '-' (e.g. '-l debug=true' or '--mail-type=END')"
                )
            cleaned.append(text)
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> JobScriptSpec:
        if self.venv and self.conda_env:
            raise ValueError("give venv or conda_env, not both")
        if self.queue and self.partition and self.queue != self.partition:
            raise ValueError(
                f"queue {self.queue!r} and partition {self.partition!r} differ; on Slurm "
                "set partition only, on PBS queue only"
            )
        # A SpecError passes through pydantic unwrapped, so the message does not echo the
        # input (the secret) the way a validation error would.
        checks.check_no_secrets(self.env, self.setup, "job")
        checks.check_no_secrets({}, self.steps, "job", lines_field="steps")
        without_ray = [
            name for name in ("ray_gpus_per_node", "ray_interface") if getattr(self, name)
        ]
        if without_ray and not self.ray:
            raise ValueError(
                f"job.{without_ray[0]} sets up the job's Ray cluster, but job.ray is off: "
                "add ray: true (--ray), or drop it"
            )
        if self.steps and self.stage_to:
            raise ValueError(
                "job.stage_to stages the model for `hpcinfer run`, which job.steps replace: "
                "make `hpcinfer stage MODEL --to DIR` (one rank per node) a step instead"
            )
        return self

    def walltime_seconds(self) -> int | None:
        return None if self.walltime is None else parse_walltime(self.walltime)
