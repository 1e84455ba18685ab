"""Every flag two commands share, defined once: its spelling, its help and the JobSpec field
it sets. A command lists the flags it takes (`@takes(...)`) and receives them as one `Flags`.

So `--model`, `-o/--out`, `--tp`, `--time-limit`, `--endpoints`, `--api-key-env`, `--quiet`
and `--json` are spelled, explained and mapped the same way in `run`, `submit`, `serve` and
`bench`; a flag left unset (None, or no repeatable value) keeps the spec file's value. Every
time flag reads its value through the one duration parser (hpcinfer.core.durations).
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hpcinfer.core.durations import FORMS

F = TypeVar("F", bound=Callable[..., Any])


def _duration(what: str, *, bare_seconds: bool = True, bare_refusal: str = "") -> Any:
    """A Typer parser: the flag's text checked by the one duration parser, kept as written
    (the spec field, and a job script, show what the user wrote)."""

    def parse(value: str) -> str:
        from hpcinfer.core.durations import parse_duration

        try:
            parse_duration(value, what=what, bare_seconds=bare_seconds, bare_refusal=bare_refusal)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    return parse


def seconds(what: str) -> Any:
    """A Typer parser: the flag's duration in seconds, through the one duration parser."""

    def parse(value: str) -> float:
        from hpcinfer.core.durations import parse_duration

        try:
            return parse_duration(value, what=what, positive=True)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parse


DURATION_FORMS = FORMS
"""The duration forms every time flag takes (one parser: core.durations), for help texts."""


@dataclass(frozen=True)
class Flag:
    """One shared flag: its Typer declaration, default and the spec field it sets (if any)."""

    annotation: Any
    field: str | None = None
    default: Any = None


def _opt(kind: Any, *decls: str, **info: Any) -> Any:
    return Annotated[kind, typer.Option(*decls, **info)]


def _bool(name: str, help: str) -> Any:
    return _opt(bool | None, f"--{name}/--no-{name}", help=help)


FLAGS: dict[str, Flag] = {
    # -- the model and its engine --------------------------------------------------------
    "model": Flag(
        _opt(
            str | None,
            help="Model directory or Hugging Face id in HF_HOME (default: the built-in tiny "
            "model); for servers already running, the served model name (default: the first "
            "one they list).",
        ),
        "model",
    ),
    "engine": Flag(
        _opt(
            str | None,
            help="vllm (offline engines, default); openai (dispatch to running servers: "
            "--endpoints or --url); vllm-server (start servers, dispatch, stop them).",
        ),
        "engine.kind",
    ),
    "dtype": Flag(_opt(str | None, help="auto, float16, bfloat16 or float32."), "engine.dtype"),
    "max_model_len": Flag(
        _opt(int | None, help="Context length (default: the model's)."), "engine.max_model_len"
    ),
    "tp": Flag(
        _opt(int | None, "--tp", help="Tensor-parallel devices per engine (default 1)."),
        "engine.tensor_parallel_size",
    ),
    "memory_share": Flag(
        _opt(float | None, help="vLLM gpu_memory_utilization (CPU: RAM share for KV cache)."),
        "engine.memory_share",
    ),
    "kv_cache_bytes": Flag(
        _opt(int | None, help="Exact KV-cache size in bytes."), "engine.kv_cache_bytes"
    ),
    "max_num_seqs": Flag(
        _opt(int | None, help="Requests one engine runs at once."), "engine.max_num_seqs"
    ),
    "trust_remote_code": Flag(
        _bool("trust-remote-code", "Run the model repository's own code."),
        "engine.trust_remote_code",
    ),
    "enforce_eager": Flag(
        _bool("enforce-eager", "No CUDA/XPU graphs (faster start, slower steps)."),
        "engine.enforce_eager",
    ),
    "profile": Flag(
        _opt(
            str | None,
            help="Hardware profile name or YAML (default: detect); gives devices and peak FLOPS.",
        ),
        "workers.profile",
    ),
    # -- sampling ------------------------------------------------------------------------
    "temperature": Flag(
        _opt(float | None, help="Sampling temperature (0: greedy)."), "sampling.temperature"
    ),
    "top_p": Flag(_opt(float | None, help="Nucleus sampling mass."), "sampling.top_p"),
    "top_k": Flag(_opt(int | None, help="Sample from the k likeliest tokens."), "sampling.top_k"),
    "max_tokens": Flag(
        _opt(int | None, help="Tokens to generate per record (default 256)."),
        "sampling.max_tokens",
    ),
    "seed": Flag(_opt(int | None, help="Sampling seed."), "sampling.seed"),
    "stop": Flag(_opt(list[str] | None, help="Stop string (repeatable)."), "sampling.stop"),
    "ignore_eos": Flag(
        _bool(
            "ignore-eos",
            "Generate max_tokens even past the end-of-sequence token (bench serve: "
            "--output-len, on unless --no-ignore-eos).",
        ),
        "sampling.ignore_eos",
    ),
    # -- inputs --------------------------------------------------------------------------
    "input_format": Flag(
        _opt(
            str | None,
            "--format",
            help="auto (from the extension; OpenAI Batch lines and saved datasets are found "
            "by their content), text, jsonl, batch, csv, tsv, parquet or hf-dataset.",
        ),
        "inputs.format",
    ),
    "prompt_field": Flag(
        _opt(
            str | None,
            "--prompt-column",
            "--prompt-field",
            help="JSONL key / CSV column with the prompt.",
        ),
        "inputs.prompt_field",
    ),
    "id_field": Flag(
        _opt(str | None, "--id-field", help="JSONL key / CSV column with the record id."),
        "inputs.id_field",
    ),
    "template": Flag(
        _opt(str | None, help="Jinja2 prompt template over the record's fields, or @file.j2."),
        "inputs.template",
    ),
    "max_tokens_field": Flag(
        _opt(str | None, help="JSONL key / CSV column with a record's own max_tokens."),
        "inputs.max_tokens_field",
    ),
    # -- outputs -------------------------------------------------------------------------
    "out": Flag(
        _opt(
            str | None,
            "--out",
            "-o",
            help="Output directory, created if missing (run and submit resume from what it "
            "holds; default hpcinfer-out/NAME, NAME the spec file's and/or first input's "
            "stem, so rerunning a command finds its directory; bench writes its JSON and "
            "CSV there, default bench-out; report writes report.html there).",
        ),
        "output.dir",
    ),
    "export": Flag(
        _opt(
            list[str] | None,
            help="jsonl, text (the per-rank {rank}.out files of Aurora-Inferencing), parquet; "
            "repeatable.",
        ),
        "output.exports",
    ),
    "include_prompt": Flag(
        _bool("include-prompt", "Write each record's prompt into its result row."),
        "output.include_prompt",
    ),
    "local_dir": Flag(
        _opt(
            str | None,
            help="Node-local dir (e.g. /dev/shm/hpcinfer) to commit units to first.",
        ),
        "output.local_dir",
    ),
    # -- workers -------------------------------------------------------------------------
    "workers": Flag(
        _opt(int | None, help="Worker processes (default: one per device group)."),
        "workers.count",
    ),
    "placement": Flag(_opt(str | None, help="compact or scatter."), "workers.placement"),
    "unit_size": Flag(
        _opt(int | None, help="Records per work unit (commit grain)."), "workers.unit_size"
    ),
    "max_inflight": Flag(
        _opt(int | None, help="Most records queued in one engine."), "workers.max_inflight"
    ),
    "launcher": Flag(
        _opt(
            str | None,
            help="local (default), or one rank per worker (per node for serve): mpi "
            "(mpiexec), srun, ssh. Started by hpcinfer, or joined when you started the ranks. "
            "run only: ray (one Ray actor per device group of a Ray cluster).",
        ),
        "workers.launcher",
    ),
    "ray_cluster": Flag(
        _opt(
            str | None,
            metavar="FILE",
            help="With --launcher ray (run) or --backend ray (serve): the cluster file of "
            "`hpcinfer ray up` (default: $RAY_ADDRESS for run, else this job's cluster file).",
        ),
        "workers.ray_cluster",
    ),
    "schedule": Flag(
        _opt(str | None, help="dynamic (default) or static: input file i to worker/rank i only."),
        "workers.schedule",
    ),
    "hostfile": Flag(
        _opt(Path | None, help="Hosts for --launcher mpi/ssh outside PBS/Slurm (one per line)."),
    ),
    "time_limit": Flag(
        _opt(
            str | None,
            parser=_duration("--time-limit"),
            metavar="DURATION",
            help=f"Stop after this long ({DURATION_FORMS}); default: inside a PBS/Slurm "
            "job, the job's remaining walltime less a margin.",
        ),
        "time_limit",
    ),
    # -- servers: where clients find them, what they require -----------------------------
    "endpoints": Flag(
        _opt(
            str | None,
            "--endpoints",
            metavar="FILE",
            help="The endpoints registry (endpoints.json): `serve` writes it, clients "
            "(run --engine openai, bench serve, endpoints) send to the servers it lists.",
        ),
        "client.registry",
    ),
    "url": Flag(
        _opt(
            list[str] | None,
            "--url",
            help="OpenAI-compatible server base URL, e.g. http://127.0.0.1:8000 (repeatable).",
        ),
        "client.urls",
    ),
    "api_key_env": Flag(
        _opt(
            str | None,
            metavar="NAME",
            help="The NAME of the environment variable holding the API key (the key itself "
            "never appears in files or logs); clients default to $OPENAI_API_KEY.",
        ),
        "client.api_key_env",
    ),
    "servers": Flag(
        _opt(
            int | None,
            help="Servers per node (default: one per GPU or tile; one on a CPU).",
        ),
        "serve.servers",
    ),
    "host": Flag(
        _opt(str | None, help="Address to bind (default 127.0.0.1; 0.0.0.0 for other nodes)."),
        "serve.host",
    ),
    "port": Flag(
        _opt(int | None, help="First port (default 8000); server i gets port + i."),
        "serve.port",
    ),
    "ready_timeout": Flag(
        _opt(
            float | None,
            parser=seconds("--ready-timeout"),
            metavar="DURATION",
            help=f"How long a server may take to become ready ({DURATION_FORMS}; default 15m).",
        ),
        "serve.ready_timeout_s",
    ),
    "log_dir": Flag(
        _opt(str | None, help="Server logs (default: serve-logs/ beside the registry)."),
        "serve.log_dir",
    ),
    # -- one server across nodes ---------------------------------------------------------
    "pp": Flag(
        _opt(int | None, "--pp", help="Pipeline-parallel stages per server (default 1)."),
        "serve.pipeline_parallel_size",
    ),
    "dp": Flag(
        _opt(int | None, "--dp", help="Data-parallel engines per server (default 1)."),
        "serve.data_parallel_size",
    ),
    "ep": Flag(
        _opt(
            bool | None,
            "--ep/--no-ep",
            help="Expert parallelism: a MoE model's experts split over TP x DP.",
        ),
        "serve.expert_parallel",
    ),
    "backend": Flag(
        _opt(
            str | None,
            metavar="mp|ray",
            help="How a server spanning nodes runs: mp (vLLM's own multi-node mode, one serve "
            "rank per node through --launcher; default) or ray (on the cluster of `hpcinfer "
            "ray up`).",
        ),
        "serve.backend",
    ),
    "nodes_per_server": Flag(
        _opt(
            int | None,
            min=1,
            help="Nodes one server spans (default: TP x PP x DP over a node's devices; on "
            "CPU with several hosts, one rank per node).",
        ),
        "serve.nodes_per_server",
    ),
    "interface": Flag(
        _opt(
            str | None,
            metavar="IF",
            help="Network interface the nodes of a server talk over (VLLM_HOST_IP, "
            "GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME; default: the hardware profile's, else "
            "the host name's address).",
        ),
        "serve.interface",
    ),
    # -- batch jobs ----------------------------------------------------------------------
    "nodes": Flag(_opt(int | None, min=1, help="Nodes to request."), "job.nodes"),
    "walltime": Flag(
        _opt(
            str | None,
            parser=_duration(
                "--walltime",
                bare_seconds=False,
                bare_refusal="Slurm reads a bare number as minutes, PBS as seconds",
            ),
            metavar="DURATION",
            help=f"The job's time limit ({DURATION_FORMS}).",
        ),
        "job.walltime",
    ),
    "account": Flag(_opt(str | None, help="Project to charge (-A / --account)."), "job.account"),
    "queue": Flag(_opt(str | None, help="PBS queue, or the Slurm partition."), "job.queue"),
    "resubmit": Flag(
        _opt(
            int | None,
            min=0,
            help="Resubmit this many times when the run stops before the walltime.",
        ),
        "job.resubmit",
    ),
    "ray": Flag(
        _bool(
            "ray",
            "Bring up a Ray cluster over the job's nodes first (`hpcinfer ray up`) and take it "
            "down when the job ends; the run uses it (--launcher ray).",
        ),
        "job.ray",
    ),
    "ray_gpus_per_node": Flag(
        _opt(
            int | None,
            min=1,
            help="With --ray: GPUs (or tiles) each node declares to Ray (default: the "
            "hardware profile's on the node).",
        ),
        "job.ray_gpus_per_node",
    ),
    "ray_interface": Flag(
        _opt(
            str | None,
            metavar="IF",
            help="With --ray: network interface for the Ray nodes' addresses, e.g. hsn0 "
            "(default: the hardware profile's, else the host name's address).",
        ),
        "job.ray_interface",
    ),
    # -- run and submit ------------------------------------------------------------------
    "retry_errors": Flag(
        _opt(
            bool,
            "--retry-errors",
            help="Rerun only the error rows in --out (and units never run), keeping its ok "
            "rows; the spec may differ (a fixed template), the records must not.",
        ),
        default=False,
    ),
    # -- every command -------------------------------------------------------------------
    "set_": Flag(
        _opt(
            list[str] | None,
            "--set",
            metavar="FIELD=VALUE",
            help="Any spec field, the value read as YAML: --set sampling.top_k=20 (repeatable; "
            "wins over the spec file and the flags).",
        ),
    ),
    "quiet": Flag(
        _opt(bool, "--quiet", "-q", help="No progress or notes on stderr."), default=False
    ),
    "json_out": Flag(
        _opt(bool, "--json", help="Print the result as one JSON document on stdout."),
        default=False,
    ),
}

# The flags each kind of command takes, by what they set.
ENGINE = ("model", "dtype", "max_model_len", "tp", "memory_share", "kv_cache_bytes",
          "max_num_seqs", "trust_remote_code", "enforce_eager", "profile")  # fmt: skip
SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "ignore_eos")
INPUTS = ("input_format", "prompt_field", "id_field", "template", "max_tokens_field")
OUTPUT = ("out", "export", "include_prompt", "local_dir")
WORKERS = ("workers", "placement", "unit_size", "max_inflight", "launcher", "ray_cluster",
           "schedule", "time_limit")  # fmt: skip
CLIENT = ("engine", "endpoints", "url", "api_key_env", "servers")
SERVER = ("servers", "host", "port", "endpoints", "api_key_env", "ready_timeout", "log_dir",
          "launcher", "hostfile", "time_limit")  # fmt: skip
SPAN = ("pp", "dp", "ep", "backend", "nodes_per_server", "interface", "ray_cluster")
"""`serve`'s flags for a server spanning nodes."""
JOB = ("nodes", "walltime", "account", "queue", "resubmit", "ray", "ray_gpus_per_node",
       "ray_interface")  # fmt: skip
OUTPUT_MODE = ("quiet", "json_out")
COMMON = ("set_", *OUTPUT_MODE)
RUN = (*ENGINE, *CLIENT, *SAMPLING, *INPUTS, *OUTPUT, *WORKERS, "retry_errors", *COMMON)
"""`run`'s flags; `submit` takes the same (plus JOB), so a job script runs what `run` would."""

SERVER_FIELDS = {"endpoints": "serve.registry", "api_key_env": "serve.api_key_env"}
"""Where `serve` puts the flags a client reads elsewhere: the registry it writes, the key
its servers require."""


class Flags(dict[str, Any]):
    """The shared flags one command was given, by parameter name."""

    def __init__(self, values: Mapping[str, Any], fields: Mapping[str, str]) -> None:
        super().__init__(values)
        self._fields = fields

    def spec_fields(self) -> dict[str, Any]:
        """The dotted JobSpec fields these flags set (unset ones included as None)."""
        return {self._fields[name]: value for name, value in self.items() if name in self._fields}

    @property
    def quiet(self) -> bool:
        return bool(self.get("quiet"))

    @property
    def json_out(self) -> bool:
        return bool(self.get("json_out"))

    @property
    def sets(self) -> list[str]:
        return list(self.get("set_") or [])


def takes(
    *names: str,
    fields: Mapping[str, str] | None = None,
    table: Mapping[str, Flag] | None = None,
    helps: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Give a command the shared flags `names` (after its own parameters); it receives them
    as one keyword argument `flags: Flags`. `fields` moves a flag to another spec field for
    this command (serve writes the registry a client reads); `table` adds flags a family of
    commands shares (bench offline and fom) to FLAGS; `helps` gives a flag this command's
    own help text (where `-o` goes and its default differ by command), same spelling."""
    unique = list(dict.fromkeys(names))
    known = {**FLAGS, **(table or {})}
    for name, text in (helps or {}).items():
        known[name] = _with_help(known[name], text)
    mapping = {n: f for n in unique if (f := (fields or {}).get(n) or known[n].field)}

    def wrap(command: F) -> F:
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "flags"
        ]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=known[name].default,
                annotation=known[name].annotation,
            )
            for name in unique
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = Flags({name: kwargs.pop(name) for name in unique}, mapping)
            return command(flags=given, **kwargs)

        parameters = [*own, *shared]
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer reads the signature above, not the command's
        return wrapper  # type: ignore[return-value]

    return wrap


def _with_help(flag: Flag, text: str) -> Flag:
    """`flag` with another help text, its spelling and spec field unchanged."""
    kind, *extras = typing.get_args(flag.annotation)
    options = [copy.copy(e) if isinstance(e, typer.models.OptionInfo) else e for e in extras]
    for option in options:
        if isinstance(option, typer.models.OptionInfo):
            option.help = text
    return Flag(Annotated[(kind, *options)], flag.field, flag.default)


SPEC_AND_INPUTS = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="SPEC.yaml INPUT...",
        help="A job spec first (optional), then input files, directories or globs.",
        show_default=False,
    ),
]
SPEC_ONLY = Annotated[
    str | None,
    typer.Argument(metavar="SPEC.yaml", help="Job spec (optional).", show_default=False),
]
