"""The job spec: one validated description of a run, from a YAML file plus CLI overrides.

Validated once at the boundary (`extra="forbid"`), so a typo or a bad value fails before any
engine starts, with the field's full path, the bad value and the valid choices.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from hpcinfer.core.durations import parse_duration
from hpcinfer.errors import SpecError
from hpcinfer.job_script_spec import JobScriptSpec

DEFAULT_MAX_TOKENS = 256
"""Explicit, documented default: vLLM's own default (16) silently truncates answers."""

ExportFormat = Literal["jsonl", "text", "parquet"]


def _seconds(value: object) -> object:
    """A duration field takes seconds or any form the one duration parser reads (`90s`,
    `15m`, `1.5h`, `01:30:00`), like every time flag: `--set serve.ready_timeout_s=15m`."""
    if isinstance(value, str):
        return parse_duration(value)
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


EngineKindName = Literal["vllm", "openai", "vllm-server"]
"""The one list of engine kinds a spec's `engine.kind` takes (checked when the spec is read).

Written here, not derived from the registry (engines.kinds), because the registry stands
above the spec: each kind's class works on a JobSpec, so the spec importing it would be an
import cycle. A unit test keeps this list and the registered kinds the same; a kind
registered at run time is set on an already validated spec."""


class EngineSpec(_Model):
    """How the inference engine is started (the same for every worker)."""

    kind: EngineKindName = Field(
        "vllm",
        description="'vllm': offline, in-process engines; 'openai': dispatch to running "
        "OpenAI-compatible servers (client.registry or client.urls); 'vllm-server': start a "
        "fleet of vLLM servers (the `serve` section), dispatch the job to it, stop it.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    max_model_len: int | None = Field(
        None, gt=0, description="Context length; default: the model's."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="Devices per engine (one worker).")
    memory_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vLLM gpu_memory_utilization; on CPU the share of RAM for the KV cache. "
        "Default: 0.9 on GPUs; on CPU 0.3 split between the node's engine processes "
        "(workers x tensor-parallel ranks).",
    )
    kv_cache_bytes: int | None = Field(
        None, gt=0, description="Exact KV-cache size (overrides memory_share)."
    )
    max_num_seqs: int | None = Field(None, gt=0, description="Requests an engine runs at once.")
    enforce_eager: bool | None = Field(
        None, description="Skip graph compilation; default True on CPU."
    )
    trust_remote_code: bool = False
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM LLM(...) keyword arguments."
    )
    lora_adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters records may choose with their `lora` field: name -> "
        "adapter directory (enables LoRA in the engine), e.g. "
        "--set engine.lora_adapters.sql=/models/sql-lora.",
    )


class SamplingSpec(_Model):
    """Sampling settings for every request."""

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, description="Disabled when unset (or -1/0).")
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, gt=0)
    min_tokens: int = Field(0, ge=0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False


class InputSpec(_Model):
    """Where prompts come from and how a record becomes a prompt."""

    paths: list[str] = Field(default_factory=list, description="Files, directories or globs.")
    format: Literal["auto", "text", "jsonl", "batch", "csv", "tsv", "parquet", "hf-dataset"] = (
        Field(
            "auto",
            description="'auto': by extension (.jsonl, .csv, .tsv, .parquet; a directory "
            "saved by datasets' save_to_disk is 'hf-dataset'; JSONL lines with custom_id, url "
            "and body are OpenAI Batch requests), else text.",
        )
    )
    prompt_field: str | None = Field(
        None, description="JSONL key or CSV/TSV column with the prompt."
    )
    id_field: str = Field("id", description="JSONL key or CSV/TSV column with the record id.")
    template: str | None = Field(
        None, description="Jinja2 template over the record's fields, or '@file.j2'."
    )
    max_tokens_field: str | None = Field(
        None, description="JSONL key / CSV column giving a record its own max_tokens."
    )
    sampling_fields: bool = Field(
        True,
        description="Read a record's own sampling settings (temperature, top_p, n, seed, "
        "json_schema, ...) from JSONL keys / columns of those names; false: they are data.",
    )


def _default_exports() -> list[ExportFormat]:
    return ["jsonl"]


class OutputSpec(_Model):
    """Where results go and which exports are written at the end."""

    dir: str = "hpcinfer-out"
    local_dir: str | None = Field(
        None,
        description="Node-local directory (e.g. /dev/shm/hpcinfer) where workers commit units "
        "first; each committed unit then moves to `dir`, so engines never wait on the shared "
        "file system.",
    )
    exports: list[ExportFormat] = Field(default_factory=_default_exports)
    include_prompt: bool = Field(False, description="Copy the prompt into results.jsonl rows.")

    @field_validator("exports")
    @classmethod
    def _dedupe(cls, value: list[ExportFormat]) -> list[ExportFormat]:
        return list(dict.fromkeys(value))


class WorkersSpec(_Model):
    """How many workers run, where they are placed and how work is cut."""

    count: int | None = Field(None, ge=1, description="Default: one per device group.")
    profile: str | None = Field(
        None, description="Hardware profile name or YAML path; default: detect this machine."
    )
    placement: Literal["compact", "scatter"] = "compact"
    unit_size: int = Field(32, ge=1, description="Records per work unit (the grain of commit).")
    max_inflight: int | None = Field(
        None,
        ge=1,
        description="Most records one worker has queued in its engine; "
        "default: the engine's max_num_seqs plus two units.",
    )
    launcher: Literal["local", "mpi", "srun", "ssh", "ray"] = Field(
        "local",
        description="How workers start: 'local' subprocesses on this node, or one rank per "
        "worker under mpiexec, srun or ssh (started by hpcinfer, or detected when the user "
        "started the ranks), or 'ray': one Ray actor per device group of a running Ray "
        "cluster (`hpcinfer ray up`).",
    )
    ray_cluster: str | None = Field(
        None,
        description="With launcher 'ray': the cluster file `hpcinfer ray up` wrote; default: "
        "$RAY_ADDRESS, else the cluster file of this job ($HPCINFER_RAY_CLUSTER, else "
        "~/.hpcinfer/ray/<job id or local>.json).",
    )
    schedule: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="'dynamic': units go to whichever worker asks; 'static': input file i "
        "goes to worker (rank) i only, as the per-rank {rank}.in -> {rank}.out files of "
        "Aurora-Inferencing's simple_test.py.",
    )


class ClientSpec(_Model):
    """How the dispatcher talks to OpenAI-compatible servers (engine.kind openai)."""

    urls: list[str] = Field(
        default_factory=list, description="Server base URLs, e.g. http://127.0.0.1:8000."
    )
    registry: str | None = Field(
        None, description="endpoints.json written by `hpcinfer serve` (re-read when it changes)."
    )
    api: Literal["auto", "completions", "chat"] = Field(
        "auto",
        description="'auto': chat for records with messages, completions for prompts; "
        "'chat': every prompt as one user message.",
    )
    inflight_per_endpoint: int = Field(
        64, ge=1, description="Most requests outstanding on one endpoint."
    )
    request_timeout_s: Seconds = Field(600.0, gt=0, description="One request, first byte to last.")
    connect_timeout_s: Seconds = Field(10.0, gt=0)
    retries: int = Field(
        4, ge=0, description="Retries of a record (on another endpoint) before an error row."
    )
    eject_after: int = Field(
        3, ge=1, description="Consecutive failures that take an endpoint out of rotation."
    )
    all_down_s: Seconds = Field(
        120.0,
        gt=0,
        description="Give up (the run fails, committed work kept) when no endpoint has "
        "answered for this long.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key itself "
        "is never written anywhere).",
    )


class ServeSpec(_Model):
    """A fleet of vLLM OpenAI-compatible servers (`hpcinfer serve`, engine.kind vllm-server)."""

    servers: int | None = Field(
        None,
        ge=1,
        description="Servers per node; default: one per device group (GPUs), one per node "
        "on all cores (CPU).",
    )
    host: str = Field(
        "127.0.0.1",
        description="Address servers bind; 0.0.0.0 or an interface address to reach them "
        "from other nodes.",
    )
    port: int = Field(8000, ge=1, le=65535, description="First port; server i gets port + i.")
    registry: str = Field("endpoints.json", description="Endpoints registry file.")
    api_key_env: str | None = Field(
        None,
        description="Require an API key: the name of the environment variable holding it.",
    )
    ready_timeout_s: Seconds = Field(
        900.0, gt=0, description="A server not ready this long after start is failed."
    )
    log_dir: str | None = Field(None, description="Server logs; default: beside the registry.")
    args: list[str] = Field(
        default_factory=list,
        description="Extra `vllm serve` arguments, e.g. ['--swap-space', '4'].",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        description="Pipeline stages per server (vLLM --pipeline-parallel-size); a server "
        "holds TP x PP x DP devices.",
    )
    data_parallel_size: int = Field(
        1, ge=1, description="Data-parallel engines inside one server (--data-parallel-size)."
    )
    expert_parallel: bool = Field(
        False, description="Experts of a MoE model split over TP x DP (--enable-expert-parallel)."
    )
    backend: Literal["mp", "ray"] = Field(
        "mp",
        description="How a server spanning nodes runs: 'mp' (vLLM's own --nnodes/--node-rank/"
        "--headless, one serve rank per node) or 'ray' (--distributed-executor-backend ray on "
        "the cluster of `hpcinfer ray up`).",
    )
    nodes_per_server: int | None = Field(
        None,
        ge=1,
        description="Nodes one server spans; default: TP x PP x DP over the devices of a node "
        "(on CPU, with several hosts: one rank per node).",
    )
    interface: str | None = Field(
        None,
        description="Network interface the ranks of a server talk over (VLLM_HOST_IP, "
        "GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME); default: the hardware profile's "
        "network_interface, else the host name's address.",
    )


class FomCaseSpec(_Model):
    """One case of `hpcinfer bench fom`: exact lengths, a batch submitted together, and the
    context length its engine is started with."""

    name: str = Field(min_length=1, description="Case name in tables, e.g. FOM1.")
    input_len: int = Field(gt=0, description="Prompt tokens per request (exactly).")
    output_len: int = Field(gt=0, description="Generated tokens per request (exactly).")
    batch_size: int = Field(1, gt=0, description="Requests submitted together.")
    max_model_len: int = Field(gt=0, description="The engine's context length for this case.")


class BenchSpec(_Model):
    """Benchmark settings read by `hpcinfer bench` (the engine comes from `engine`)."""

    fom_cases: list[FomCaseSpec] = Field(
        default_factory=list,
        description="Cases of `hpcinfer bench fom` (instead of a --preset), e.g. FOM1 "
        "prefill-heavy, FOM2 decode-heavy, FOM3 with a large max_model_len.",
    )


class JobSpec(_Model):
    """Everything `hpcinfer run` needs; see `hpcinfer spec --schema`."""

    model: str | None = Field(
        None, description="Local path or HF id in HF_HOME; default: tiny model."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    inputs: InputSpec = Field(default_factory=InputSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    time_limit: str | float | None = Field(
        None,
        description="Stop taking new work after this long: '90s', '45m', '1.5h', '2d', '1h30m', "
        "'HH:MM:SS' or 'D-HH:MM:SS'. "
        "Inside a PBS or Slurm job the default is the job's remaining walltime less a margin.",
    )
    job: JobScriptSpec = Field(default_factory=JobScriptSpec)
    client: ClientSpec = Field(default_factory=ClientSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)

    @field_validator("time_limit")
    @classmethod
    def _check_time_limit(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value, what="time_limit")
        return value

    def time_limit_seconds(self) -> float | None:
        if self.time_limit is None:
            return None
        return parse_duration(self.time_limit, what="time_limit")

    def identity(self) -> dict[str, Any]:
        """The fields that must not change when a run resumes (worker count, TP, exports may).

        Fields at their defaults are left out, so a later hpcinfer that adds a field (with a
        default) still resumes the runs of an earlier one."""
        return {
            "model": self.model,
            "engine": self.engine.model_dump(
                include={"dtype", "max_model_len", "extra"}, exclude_defaults=True
            ),
            "sampling": self.sampling.model_dump(exclude_defaults=True),
            "inputs": self.inputs.model_dump(exclude_defaults=True),
            "unit_size": self.workers.unit_size,
        }


def digest_identity(identity: dict[str, Any]) -> str:
    """Fingerprint of a run's identity (spec fields that decide the rows, plus input digests)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a spec YAML file into a plain mapping (validated later, after CLI overrides)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path} cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            f"spec file {path} must hold a mapping of fields (got {type(data).__name__})"
        )
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, creating levels; used for CLI overrides and --set."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_set_option(item: str) -> tuple[str, Any]:
    """`key.path=value` with the value read as YAML (so numbers, booleans and lists work)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: write it as FIELD=VALUE, e.g. --set sampling.top_k=20")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_spec(data: dict[str, Any], source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, turning pydantic's errors into one readable message."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid ({exc.error_count()} problem{'s' * (exc.error_count() > 1)}):"]
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            parent = _model_at(error["loc"][:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else ""
            message = f"unknown field; valid fields here: {valid}"
        value = error.get("input")
        shown = "" if error["type"] in ("missing", "extra_forbidden") else f" (got {value!r})"
        lines.append(f"  {path}: {message}{shown}")
    return "\n".join(lines)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    for key in loc:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def spec_json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
