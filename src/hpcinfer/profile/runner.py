"""`hpcinfer profile run`: one experiment config -> one profiled run folder.

The engine is `run`'s offline vLLM engine (`engines.vllm_offline.llm_kwargs`: dtype from the
config's precision, the CPU KV-cache share, the in-process executor at TP=1 on CPU), bound to
its devices as `run` binds a worker (`VLLM_CPU_OMP_THREADS_BIND` on CPU), started in a child
process through `core.processes` (its whole process tree ends with us), with
`tensor_parallel_size`/`pipeline_parallel_size` from the config, `enable_expert_parallel`
when ep > 1, vLLM's torch profiler configured for every worker and this package's worker
extension. The child (`profile.engine_child`) does warm-up, timed (unprofiled) and profiled
iterations; here its traces are renamed by the rank in their `distributedInfo`, the ranks
are checked against tp x pp x dp, and `profile.json` is written (also when a rank is
missing: what was written is kept, and the run then fails naming the rank).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.errors import EngineError, HardwareError, HpcinferError, SpecError
from hpcinfer.logtail import log_tail
from hpcinfer.profile.engine_child import EXTENSION, Iteration, ProfileJob
from hpcinfer.profile.experiment import (
    ExperimentConfig,
    load_experiment,
    output_dir_of,
    save_experiment,
)
from hpcinfer.profile.rank_files import check_rank_files
from hpcinfer.profile.result import (
    PROFILE_FILE,
    Hardware,
    ProfileResult,
    ProfilerOverhead,
    RankFiles,
    StartupPhases,
    Timing,
    Versions,
)
from hpcinfer.profile.trace_collect import (
    UNREADABLE_DIR,
    collect_traces,
    kineto_name,
    trace_distributed_info,
)

Progress = Callable[[str], None]
CONFIG_FILE = "config.yaml"
RAW_TRACES = "raw_traces"
"""vLLM's torch_profiler_dir inside the run folder: what is left there is not a rank's."""
PER_RANK_PATTERNS = ("kineto_trace_*.json.gz", "torch_et_*.json", "timing_stats_*.json",
                     "operators_*.csv")  # fmt: skip
NSYS_FLAGS = ("--trace-fork-before-exec=true", "--cuda-graph-trace=node")
"""What vLLM's profiling guide gives nsys: follow the engine's forked workers, and show
the kernels inside CUDA graphs one by one."""
STOP_GRACE_S = 10.0


class MissingRanksError(HpcinferError):
    """A rank wrote no trace; the other ranks' files and profile.json are kept."""

    exit_code = 1


def _silent(_line: str) -> None:
    """No progress lines (a library call)."""


@dataclass(frozen=True)
class ProfileRunOptions:
    """How `profile run` runs an experiment, beyond the config itself."""

    nsys: bool = False
    hardware_profile: str | None = None
    """A hardware profile name or YAML (default: detect this machine)."""
    kv_cache_bytes: int | None = None
    memory_share: float | None = None
    execution_trace: bool = True
    analyze: bool = True
    """Run the trace analysis (hpcinfer.traces) on the run folder at the end."""
    progress: Progress = _silent
    base_env: Mapping[str, str] | None = None
    cwd: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class ProfileOutcome:
    result: ProfileResult
    run_dir: Path
    notes: list[str]


# ---------------------------------------------------------------------------------------
# checks before anything starts


def parallel_refusals(config: ExperimentConfig) -> list[str]:
    """Why vLLM, as `profile run` drives it, cannot run this plan (the grid's own checks, so
    the grid never writes a config run refuses); empty when it can."""
    from hpcinfer.profile.vllm_parallel import model_architecture, plan_for_vllm

    return plan_for_vllm(config, model_architecture(config.model.name)).refusals


def nsys_command(report: Path) -> list[str]:
    """The `nsys profile ...` prefix; SpecError (exit 2) when nsys is not on PATH."""
    nsys = shutil.which("nsys")
    if nsys is None:
        raise SpecError(
            "--nsys: Nsight Systems (`nsys`) is not on PATH; load it first (e.g. `module "
            "load nsight-systems`, or add the CUDA toolkit's bin folder to PATH), or run "
            "without --nsys"
        )
    return [nsys, "profile", *NSYS_FLAGS, "--force-overwrite=true", "-o", str(report)]


def _model(name: str, cwd: Path) -> tuple[str, str]:
    from hpcinfer.core.models import resolve_model
    from hpcinfer.spec import JobSpec

    spec = JobSpec.model_validate({"model": None if name == "tiny" else name})
    return resolve_model(spec, cwd)


# ---------------------------------------------------------------------------------------
# the engine


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cores: frozenset[int] | None
    llm_kwargs: dict[str, Any]
    devices: int
    hardware: Hardware


def _launch(
    config: ExperimentConfig,
    options: ProfileRunOptions,
    run_dir: Path,
    job_path: Path,
    events_path: Path,
) -> tuple[_Launch, ProfileJob]:
    from hpcinfer.cluster import cpu_affinity, one_engine_placement, resolve_profile
    from hpcinfer.core.processes import bound_env
    from hpcinfer.engines.vllm_offline import EngineSetup, engine_env, llm_kwargs
    from hpcinfer.profile.vllm_parallel import engine_args
    from hpcinfer.spec import EngineSpec, SamplingSpec

    p, data = config.parallelism, config.data
    profile = resolve_profile(options.hardware_profile)
    devices = p.tp * p.pp
    placement = one_engine_placement(
        profile,
        devices,
        lambda unit: HardwareError(
            f"tp {p.tp} x pp {p.pp} needs {devices} {unit}; the hardware profile "
            f"'{profile.name}' has {profile.devices_per_node} per node: lower tp/pp in the "
            "config, or run it where there are more (--profile names the machine)"
        ),
    )
    model_path, model_name = _model(config.model.name, options.cwd)
    engine = EngineSpec(
        dtype=config.model.precision,
        tensor_parallel_size=p.tp,
        max_model_len=data.seq_len + data.max_tokens,
        max_num_seqs=data.batch_size,
        kv_cache_bytes=options.kv_cache_bytes,
        memory_share=options.memory_share,
        extra={"enable_prefix_caching": False},
    )
    setup = EngineSetup(
        model_path=model_path,
        model_name=model_name,
        engine=engine,
        sampling=SamplingSpec(seed=0, temperature=0.0),
        on_cpu=profile.is_cpu,
    )
    kwargs = llm_kwargs(setup)
    engine_vars = engine_env(setup)
    plan = engine_args(p)
    plan.pop("data_parallel_size")  # 1 here: more is refused before anything starts
    kwargs.update(plan)  # tensor/pipeline parallel sizes, enable_expert_parallel
    if p.pp > 1 and kwargs.get("distributed_executor_backend") == "uni":
        del kwargs["distributed_executor_backend"]  # no pipeline stages in one process
        engine_vars = {}
    kwargs["worker_extension_cls"] = EXTENSION
    kwargs["profiler_config"] = {
        "profiler": "torch",
        "torch_profiler_dir": str(run_dir / RAW_TRACES),
        "torch_profiler_with_stack": False,  # costly, and not what the analysis reads
        "torch_profiler_record_shapes": True,
        "torch_profiler_use_gzip": True,
    }
    job = ProfileJob(
        llm_kwargs=kwargs,
        batch_size=data.batch_size,
        seq_len=data.seq_len,
        max_tokens=data.max_tokens,
        warmup_iterations=config.warmup_iterations,
        timed_iterations=config.timed_iterations,
        profile_iterations=config.profile_iterations,
        out_dir=str(run_dir),
        execution_trace=options.execution_trace,
    )
    argv = [sys.executable, "-m", "hpcinfer.profile.engine_child", str(job_path)]
    argv.append(str(events_path))
    if options.nsys:
        argv = [*nsys_command(run_dir / "nsys_report"), *argv]
    base = os.environ if options.base_env is None else options.base_env
    env = bound_env(base, placement.env, engine_vars)
    cores = cpu_affinity(placement.group)
    hardware = Hardware(
        device_type="cpu" if profile.is_cpu else _DEVICE_TYPES[profile.vendor],
        device_model=profile.accelerator or platform.processor() or profile.name,
        count_per_node=devices,
        nodes=1,
        network_topology=profile.network_topology,
    )
    launch = _Launch(argv, env, frozenset(cores) if cores else None, kwargs, devices, hardware)
    return launch, job


_DEVICE_TYPES = {"nvidia": "cuda", "amd": "rocm", "intel": "xpu", "cpu": "cpu"}


def _read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines written to `path` since `offset`, and the new offset."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + end


def _describe(event: Mapping[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "ready":
        return (
            f"engine ready in {event['startup_s']:.1f} s (vLLM {event['vllm_version']}, "
            f"{event['dtype']})"
        )
    if kind == "iteration":
        return f"{event['phase']} {event['index']}/{event['count']}: {event['wall_s']:.3f} s"
    return None


def _drive(launch: _Launch, events_path: Path, log: Path, progress: Progress) -> dict[str, Any]:
    """Start the engine child, relay its progress, return its events by kind once it ends.
    Whatever happens (an error, Ctrl-C), its whole process tree is gone on return."""
    from hpcinfer.core.processes import spawn

    child = spawn(
        launch.argv,
        env=launch.env,
        log=log,
        fresh_log=True,
        cores=launch.cores,
        death_signal=signal.SIGKILL,  # it ignores SIGINT: we decide when it ends
    )
    seen: dict[str, Any] = {}
    offset = 0
    try:
        while True:
            exited = child.wait(0.25)
            events, offset = _read_events(events_path, offset)
            for event in events:
                seen[str(event.get("event"))] = event
                line = _describe(event)
                if line is not None:
                    progress(line)
            if exited:
                break
    finally:
        # interrupted: the engine goes with us (SIGTERM first: nsys then writes its report);
        # done: whatever it left behind (an EngineCore) is reaped
        child.stop(STOP_GRACE_S if child.alive() else 0.0)
    if "error" in seen:
        raise EngineError(_failure(f"the engine failed: {seen['error']['message']}", log))
    if "done" not in seen:
        raise EngineError(_failure(f"the engine process {child.exit_text()}", log))
    return seen


def _failure(message: str, log: Path) -> str:
    tail = log_tail(log, lines=15)
    return f"{message} (log: {log})" + (f"\nlast log lines:\n{tail}" if tail else "")


# ---------------------------------------------------------------------------------------
# figures


def timing_of(timed: list[Iteration]) -> Timing:
    """TTFT, TPOT and throughput of the unprofiled iterations, from the tokens each request
    really had (prompt tokens as vLLM counted them, output tokens as they came out)."""
    requests = [r for it in timed for r in it.requests]
    wall = sum(it.wall_s for it in timed)
    input_tokens = sum(r.prompt_tokens for r in requests)
    output_tokens = sum(r.output_tokens for r in requests)
    decoding = [r for r in requests if r.output_tokens > 1]
    tpot = (
        1000.0 * sum((r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in decoding) / len(decoding)
        if decoding
        else None
    )
    return Timing(
        iterations=len(timed),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_ms=1000.0 * sum(r.ttft_s for r in requests) / len(requests) if requests else None,
        tpot_ms=tpot,
        step_ms=1000.0 * wall / len(timed),
        output_tokens_per_s=output_tokens / wall,
        total_tokens_per_s=(input_tokens + output_tokens) / wall,
    )


def _mean_ms(iterations: list[Iteration]) -> float:
    return 1000.0 * sum(it.wall_s for it in iterations) / len(iterations)


def _versions(ready: Mapping[str, Any], info: Mapping[str, Any] | None) -> Versions:
    """From the engine child's `ready` event (its vLLM, driver and communication library,
    see profile.platform_info), else the library a rank's trace names."""
    import hpcinfer

    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    child = ready.get("platform") or {}
    library = child.get("communication_library")
    if library is None and info:
        nccl = info.get("nccl_version")
        library = f"NCCL {nccl}" if nccl else f"{info.get('backend', '?')} (torch.distributed)"
    return Versions(
        hpcinfer=hpcinfer.__version__,
        python=platform.python_version(),
        torch=installed("torch"),
        vllm=ready.get("vllm_version"),
        driver=child.get("driver"),
        communication_library=library,
    )


def _rank_files(run_dir: Path, ranks: list[int]) -> list[RankFiles]:
    def present(name: str) -> str | None:
        return name if (run_dir / name).is_file() else None

    return [
        RankFiles(
            rank=rank,
            kineto_trace=kineto_name(rank),
            torch_et=present(f"torch_et_{rank}.json"),
            timing_stats=present(f"timing_stats_{rank}.json"),
            operators=present(f"operators_{rank}.csv"),
        )
        for rank in ranks
    ]


def _clear_previous(run_dir: Path) -> None:
    """A rerun replaces the per-rank files of the last run (a stale rank file would pass the
    rank check)."""
    for pattern in PER_RANK_PATTERNS:
        for stale in run_dir.glob(pattern):
            stale.unlink()
    shutil.rmtree(run_dir / RAW_TRACES, ignore_errors=True)
    shutil.rmtree(run_dir / UNREADABLE_DIR, ignore_errors=True)
    (run_dir / PROFILE_FILE).unlink(missing_ok=True)


def _analyze(run_dir: Path, notes: list[str]) -> None:
    """analysis.json and its CSV tables beside the traces (`hpcinfer profile analyze`); a
    failure there is a note, not a lost run: the traces are kept to analyze again."""
    from hpcinfer.traces import analyze_traces

    try:
        analysis = analyze_traces(run_dir, run_dir)
    except HpcinferError as exc:
        notes.append(f"trace analysis failed ({exc}); rerun `hpcinfer profile analyze {run_dir}`")
        return
    if analysis.straggler is not None:
        notes.append(f"rank {analysis.straggler} arrived last at the collectives (analysis.json)")


# ---------------------------------------------------------------------------------------
# the whole run


def check_config(config_path: Path, options: ProfileRunOptions) -> tuple[Path, ExperimentConfig]:
    """What can be checked before an engine starts: the config (file, line and field named),
    a parallel plan vLLM cannot run, --nsys without nsys. SpecError otherwise."""
    if not config_path.is_absolute():
        config_path = options.cwd / config_path
    config = load_experiment(config_path)
    refusals = parallel_refusals(config)
    if refusals:
        raise SpecError(f"{config_path}: parallelism: " + "; ".join(refusals))
    if options.nsys:
        nsys_command(Path("nsys_report"))
    return config_path, config


def run_profile(config_path: Path, options: ProfileRunOptions) -> ProfileOutcome:
    """Profile one experiment; write its run folder; return profile.json's content.

    SpecError before anything starts (bad config, a plan vLLM cannot run, --nsys without
    nsys); EngineError when the engine fails (its log is named); MissingRanksError when a
    rank wrote no trace (after profile.json is written)."""
    config_path, config = check_config(config_path, options)
    run_dir = output_dir_of(config, config_path)
    logs = run_dir / "logs"
    job_path, events_path, log = (
        logs / "profile-job.json",
        logs / "profile-events.jsonl",
        logs / "engine.log",
    )
    launch, job = _launch(config, options, run_dir, job_path, events_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(run_dir)
    logs.mkdir(exist_ok=True)
    save_experiment(config, run_dir / CONFIG_FILE)
    job_path.write_text(job.as_json(), encoding="utf-8")
    events_path.unlink(missing_ok=True)
    p = config.parallelism
    options.progress(
        f"{config.experiment_id}: {config.model.name}, TP={p.tp} PP={p.pp}, batch "
        f"{config.data.batch_size} x ({config.data.seq_len} in, {config.data.max_tokens} out) "
        f"(log: {log})"
    )
    started = time.monotonic()
    seen = _drive(launch, events_path, log, options.progress)
    done = seen["done"]
    timed = [Iteration.from_dict(i) for i in done["timed"]]
    profiled = [Iteration.from_dict(i) for i in done["profiled"]]
    collected = collect_traces(run_dir / RAW_TRACES, run_dir)
    notes = list(collected.notes)
    et = done.get("execution_trace") or {}
    if et.get("note"):
        notes.append(f"no torch_et_<rank>.json: {et['note']}")
    for entry in done.get("rank_files", []):
        if entry.get("error"):
            notes.append(f"rank {entry['rank']}: {entry['error']}")
    expected = p.world_size
    check = check_rank_files(run_dir, expected)
    missing = check.missing
    first = collected.by_rank.get(min(collected.by_rank)) if collected.by_rank else None
    nsys_report = next(iter(sorted(run_dir.glob("nsys_report.*"))), None)
    if options.analyze and collected.by_rank:
        _analyze(run_dir, notes)
    result = ProfileResult(
        experiment=config,
        versions=_versions(seen["ready"], trace_distributed_info(first) if first else None),
        hardware=launch.hardware,
        timing=timing_of(timed),
        profiler=ProfilerOverhead(
            step_ms_unprofiled=_mean_ms(timed), step_ms_profiled=_mean_ms(profiled)
        ),
        startup=StartupPhases.model_validate(done["startup"]),
        ranks=_rank_files(run_dir, sorted(collected.by_rank)),
        expected_ranks=expected,
        missing_ranks=missing,
        nsys=nsys_report.name if nsys_report else None,
        notes=notes,
    )
    (run_dir / PROFILE_FILE).write_text(result.model_dump_json(indent=1), encoding="utf-8")
    options.progress(f"profiled in {time.monotonic() - started:.1f} s: {run_dir}")
    if missing:
        raise MissingRanksError(
            f"{check.problem()} in {run_dir}, a plan of {expected} ranks; the other ranks' "
            f"files and profile.json are kept. The engine log says why that worker did not "
            f"profile: {log}"
        )
    return ProfileOutcome(result, run_dir, notes)
