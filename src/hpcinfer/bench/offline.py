"""`hpcinfer bench offline`: the ALCF inference FOM's benchmark on in-process vLLM, done right.

Its `infr_bench.py` timed one request holding `batch` copies of the word "France", without
`ignore_eos` or a warm-up, and computed its FOM by hand. Here a batch is `batch_size`
separate requests submitted together, each a prompt of exactly `input_len` random token
ids, each generating exactly `output_len` tokens (`ignore_eos`, `max_tokens`); warm-up
iterations run first and are not counted; the token counts vLLM reports are checked
against the asked lengths (a mismatch fails the run) and the figures are computed from
them (`bench.samples` defines them, `bench.fom` gives the FOM's throughput and FLOP FOM).

The engine is built exactly as `hpcinfer run` builds one (`engines.vllm_offline.llm_kwargs`,
the model resolution, hardware profile and device binding of `run`), in a child process
(`bench.offline_engine`), with two benchmark defaults: the prefix cache is off (as in
`vllm bench latency`) and `max_num_seqs` is the batch size, so the whole batch runs at
once; both can be overridden (`--max-num-seqs`, `--set engine.extra.enable_prefix_caching=true`).
`--pp` passes pipeline stages to vLLM (with worker processes, never the in-process engine);
vLLM 0.32's CPU backend fails with pipeline stages in eager mode (a stage's intermediate
tensors are never set up; the error names the engine log), so on CPU use `--tp`.

Results (see `bench.results`): `DIR/offline.json` with `"result"` holding, besides the
documented keys, `input_tokens`/`output_tokens` per timed iteration (measured, = batch x
length), their totals over the timed iterations, per-request TTFT/E2E statistics, and the
prefill/decode rates; the FOM's row is appended to `DIR/offline.csv` (and `--csv PATH`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hpcinfer.bench.fom import (
    FomCase,
    FomResult,
    ModelShape,
    append_csv_row,
    case_result,
    check_csv_header,
    fom_csv_row,
)
from hpcinfer.bench.metrics import DEFAULT_PERCENTILES
from hpcinfer.bench.offline_engine import (
    BatchCase,
    EngineInfo,
    EngineJob,
    EngineRun,
    run_engine,
)
from hpcinfer.bench.results import result_document, write_result
from hpcinfer.bench.samples import (
    IterationSample,
    check_exact,
    decode_rate,
    latency_stats,
    prefill_rate,
    request_stats,
)
from hpcinfer.cluster import HardwareProfile, cpu_affinity, one_engine_placement
from hpcinfer.cluster.placement import Placement
from hpcinfer.core.models import resolve_model
from hpcinfer.core.processes import bound_env
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec, SamplingSpec

DEFAULT_OUT = "bench-out"
PROMPTS = (
    "random token ids (special ids excluded), exactly input_len per request, fresh for "
    "every request and iteration (seeded); ignore_eos, max_tokens = output_len"
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """What every offline-engine benchmark shares: the engine (a validated JobSpec: model,
    engine section, hardware profile), pipeline stages, iterations, sampling, reporting."""

    spec: JobSpec
    out_dir: Path
    pp: int = 1
    warmup_iters: int = 1
    iters: int = 3
    seed: int = 0
    temperature: float = 0.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    peak_tflops: float | None = None
    csv_copy: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    command: tuple[str, ...] = ()
    """The command line the result file records (the CLI passes its argv)."""

    def __post_init__(self) -> None:
        if self.pp < 1:
            raise SpecError(f"--pp {self.pp}: pipeline stages must be 1 or more")
        if self.iters < 1:
            raise SpecError(f"--iters {self.iters}: time at least one iteration")
        if self.warmup_iters < 0:
            raise SpecError(f"--warmup-iters {self.warmup_iters}: use 0 or more")
        if self.temperature < 0:
            raise SpecError(f"--temperature {self.temperature}: use 0 (greedy) or more")
        if self.peak_tflops is not None and not (
            math.isfinite(self.peak_tflops) and self.peak_tflops > 0
        ):
            raise SpecError(f"--peak-tflops {self.peak_tflops}: give a positive TFLOPS figure")

    @property
    def tp(self) -> int:
        return self.spec.engine.tensor_parallel_size


@dataclass(frozen=True)
class Hardware:
    """The devices one engine gets (TP x PP of them) and the peak MFU is measured against."""

    profile: HardwareProfile
    placement: Placement
    devices: int
    peak_tflops: float | None
    peak_source: str

    def mfu_note(self) -> str:
        if self.peak_tflops is not None:
            return f"MFU against {self.peak_tflops:g} TFLOPS per device ({self.peak_source})"
        return (
            f"MFU n/a: the hardware profile '{self.profile.name}' has no peak_tflops_bf16 "
            "(CPU profiles have none); give --peak-tflops or a profile with one"
        )


def resolve_hardware(settings: BenchSettings) -> Hardware:
    """The profile (`--profile`, else detected), one engine's placement on it, and the peak."""
    from hpcinfer.cluster import resolve_profile

    profile = resolve_profile(settings.spec.workers.profile)
    devices = settings.tp * settings.pp
    placement = one_engine_placement(
        profile,
        devices,
        lambda unit: SpecError(
            f"--tp {settings.tp} x --pp {settings.pp} needs {devices} {unit}; the hardware "
            f"profile '{profile.name}' has {profile.devices_per_node}: lower --tp/--pp (or pick "
            "the machine's profile with --profile)"
        ),
    )
    peak: float | None = settings.peak_tflops
    source = "--peak-tflops"
    if peak is None:
        peak = profile.peak_tflops_bf16
        source = f"peak_tflops_bf16 of the hardware profile '{profile.name}'"
    return Hardware(profile, placement, devices, peak, source)


@dataclass(frozen=True)
class EngineLaunch:
    """What the engine child gets: vLLM's keyword arguments and its process environment."""

    llm_kwargs: dict[str, Any]
    env: dict[str, str]
    model_name: str
    model_path: str
    cores: frozenset[int] | None = None
    """The CPU cores the child is pinned to (a core placement); None: not pinned."""


def engine_launch(
    settings: BenchSettings,
    hardware: Hardware,
    model: tuple[str, str],
    max_model_len: int | None,
    max_batch: int,
    base_env: Mapping[str, str] | None = None,
) -> EngineLaunch:
    """`run`'s engine for these settings: llm_kwargs/engine_env of the offline adapter, the
    placement's binding, plus the benchmark defaults (no prefix cache, max_num_seqs = the
    largest batch) and the pipeline stages."""
    from hpcinfer.engines.vllm_offline import EngineSetup, engine_env, llm_kwargs

    model_path, model_name = model
    engine = settings.spec.engine
    extra = {"enable_prefix_caching": False, **engine.extra}
    engine = engine.model_copy(
        update={
            "max_model_len": max_model_len if max_model_len is not None else engine.max_model_len,
            "max_num_seqs": engine.max_num_seqs or max_batch,
            "extra": extra,
        }
    )
    setup = EngineSetup(
        model_path=model_path,
        model_name=model_name,
        engine=engine,
        sampling=SamplingSpec(seed=settings.seed, temperature=settings.temperature),
        on_cpu=hardware.profile.is_cpu,
    )
    kwargs = llm_kwargs(setup)
    engine_vars = engine_env(setup)
    if settings.pp > 1:
        # the in-process (uni) executor of a TP=1 engine cannot hold pipeline stages
        kwargs["pipeline_parallel_size"] = settings.pp
        if kwargs.get("distributed_executor_backend") == "uni":
            del kwargs["distributed_executor_backend"]
        engine_vars = {}
    env = bound_env(
        os.environ if base_env is None else base_env, hardware.placement.env, engine_vars
    )
    cores = cpu_affinity(hardware.placement.group)
    return EngineLaunch(kwargs, env, model_name, model_path, frozenset(cores) if cores else None)


def resolve_bench_model(settings: BenchSettings) -> tuple[str, str]:
    """(path or HF id for vLLM, display name), as `hpcinfer run` resolves `--model`."""
    return resolve_model(settings.spec, settings.cwd)


def run_cases(
    settings: BenchSettings,
    launch: EngineLaunch,
    cases: Sequence[BatchCase],
    log: Path,
    progress: Progress,
) -> EngineRun:
    """One engine, every case on it in order; the timed samples of each."""
    job = EngineJob(
        llm_kwargs=launch.llm_kwargs,
        cases=tuple(cases),
        warmup_iters=settings.warmup_iters,
        iters=settings.iters,
        seed=settings.seed,
        temperature=settings.temperature,
    )
    return run_engine(job, launch.env, log, progress, cores=launch.cores)


def model_shape(info: EngineInfo) -> tuple[ModelShape | None, str]:
    """The shape for the FLOP FOM from the engine's model config, or None and why not."""
    return shape_from_config(info.text_config)


def shape_from_config(config: Mapping[str, Any]) -> tuple[ModelShape | None, str]:
    """The shape for the FLOP FOM from a Hugging Face config, or None and why not."""
    try:
        shape = ModelShape.from_hf_config(config)
    except ValueError as exc:
        return None, f"FLOP FOM n/a: {exc}"
    return shape, f"the FOM's FLOP form with N={shape.layers} layers, d={shape.hidden}"


class MfuBasis(Protocol):
    """What MFU is measured against: the peak per device and the devices used."""

    @property
    def peak_tflops(self) -> float | None: ...

    @property
    def devices(self) -> int: ...


def case_figures(
    case: FomCase,
    iterations: Sequence[IterationSample],
    shape: ModelShape | None,
    hardware: MfuBasis,
    percentiles: Sequence[float],
) -> tuple[dict[str, Any], FomResult]:
    """Every figure of one batch shape from its timed iterations (for the result file) and
    the FOM's (for its CSV and the FOM sum), after checking that each request had exactly
    the asked lengths (EngineError otherwise)."""
    check_exact(
        case.name,
        iterations,
        input_len=case.input_len,
        output_len=case.output_len,
        batch_size=case.batch_size,
    )
    latencies = [it.latency_s for it in iterations]
    stats = latency_stats(latencies, percentiles)
    measured = case_result(
        case,
        stats["mean"],
        shape,
        peak_tflops=hardware.peak_tflops,
        devices=hardware.devices,
        input_tokens=iterations[0].input_tokens,
        output_tokens=iterations[0].output_tokens,
    )
    figures = {
        "name": case.name,
        "input_len": case.input_len,
        "output_len": case.output_len,
        "batch_size": case.batch_size,
        "max_model_len": case.max_model_len,
        "iterations": len(iterations),
        "latency_s": stats,
        "iterations_s": latencies,
        "input_tokens": measured.input_tokens,
        "output_tokens": measured.output_tokens,
        "total_input_tokens": sum(it.input_tokens for it in iterations),
        "total_output_tokens": sum(it.output_tokens for it in iterations),
        "cached_prompt_tokens": sum(it.cached_tokens for it in iterations),
        "throughput": measured.throughput,
        "prefill_tokens_per_s": prefill_rate(iterations),
        "decode_tokens_per_s": decode_rate(iterations),
        "flops_per_s": measured.flops_per_s,
        "mfu": measured.mfu,
        "requests": request_stats(iterations, percentiles),
    }
    return figures, measured


def base_config(
    settings: BenchSettings,
    hardware: Hardware,
    launch: EngineLaunch,
    info: EngineInfo,
    shape_note: str,
) -> dict[str, Any]:
    """The config part of a result document: enough to reproduce the run and read it."""
    return {
        "model": launch.model_name,
        "model_path": launch.model_path,
        "precision": info.dtype,
        "tensor_parallel": settings.tp,
        "pipeline_parallel": settings.pp,
        "devices": hardware.devices,
        "warmup_iters": settings.warmup_iters,
        "iters": settings.iters,
        "seed": settings.seed,
        "temperature": settings.temperature,
        "percentiles": list(settings.percentiles),
        "prompts": PROMPTS,
        "profile": hardware.profile.name,
        "peak_tflops": hardware.peak_tflops,
        "mfu_note": hardware.mfu_note(),
        "flops_note": shape_note,
        "vllm_version": info.vllm_version,
        "engine_startup_s": info.startup_s,
        "engine_startup": info.startup,
        "llm_kwargs": launch.llm_kwargs,
    }


def case_csv_row(
    model_name: str, result: FomResult, precision: str | None, tp: int | None
) -> dict[str, Any]:
    """The FOM's CSV row for one case (latency: the mean over the timed iterations, s);
    precision or TP None (a server does not report them) leave their cells empty."""
    return fom_csv_row(
        model=model_name,
        precision=precision,
        throughput=result.throughput,
        latency_s=result.latency_s,
        batch_size=result.case.batch_size,
        tensor_parallel=tp,
        input_len=result.case.input_len,
        output_len=result.case.output_len,
        context_length=result.case.max_model_len,
    )


def fom_csv_tables(settings: BenchSettings, *own: Path) -> tuple[Path, ...]:
    """The CSV files that get the FOM's rows (`own` and `--csv`), checked before the run
    so a table with another header fails now rather than after the benchmark."""
    paths = (*own, *((settings.csv_copy,) if settings.csv_copy is not None else ()))
    for path in paths:
        try:
            check_csv_header(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            flag = "--csv " if path == settings.csv_copy else ""
            raise SpecError(f"{flag}{path}: cannot append the FOM's rows: {exc}") from None
    return paths


@dataclass(frozen=True)
class OfflineOutcome:
    document: dict[str, Any]
    json_path: Path
    csv_paths: tuple[Path, ...]


def run_offline(
    settings: BenchSettings,
    input_len: int,
    output_len: int,
    batch_size: int,
    progress: Progress,
) -> OfflineOutcome:
    """The whole benchmark: start the engine, time the batch, write offline.json and the
    FOM CSV row(s)."""
    for flag, value in (
        ("--input-len", input_len),
        ("--output-len", output_len),
        ("--batch-size", batch_size),
    ):
        if value < 1:
            raise SpecError(f"{flag} {value}: use 1 or more")
    asked_len = settings.spec.engine.max_model_len
    if asked_len is not None and input_len + output_len > asked_len:
        raise SpecError(
            f"--input-len {input_len} + --output-len {output_len} = {input_len + output_len} "
            f"tokens do not fit --max-model-len {asked_len}: raise it or shorten the lengths"
        )
    csv_paths = fom_csv_tables(settings, settings.out_dir / "offline.csv")
    hardware = resolve_hardware(settings)
    model = resolve_bench_model(settings)
    launch = engine_launch(settings, hardware, model, asked_len, batch_size)
    log = settings.out_dir / "logs" / "offline-engine.log"
    log.unlink(missing_ok=True)
    progress(
        f"starting the engine: {launch.model_name}, TP={settings.tp}, PP={settings.pp} on "
        f"{hardware.placement.group.label or hardware.profile.name} (log: {log})"
    )
    case = BatchCase("offline", input_len, output_len, batch_size)
    run = run_cases(settings, launch, [case], log, progress)
    shape, shape_note = model_shape(run.info)
    fom_case = FomCase("offline", input_len, output_len, batch_size, run.info.max_model_len)
    figures, measured = case_figures(
        fom_case, run.cases["offline"], shape, hardware, settings.percentiles
    )
    config = base_config(settings, hardware, launch, run.info, shape_note)
    config.update(
        input_len=input_len,
        output_len=output_len,
        batch_size=batch_size,
        max_model_len=run.info.max_model_len,
    )
    document = result_document("offline", config, {"result": figures}, settings.command)
    json_path = write_result(settings.out_dir, document)
    row = case_csv_row(launch.model_name, measured, run.info.dtype, settings.tp)
    for path in csv_paths:
        append_csv_row(path, row)
    return OfflineOutcome(document, json_path, csv_paths)
