"""`hpcinfer run` as a library call: spec in, results and a summary out.

spec -> inputs -> plan (units; committed ones skipped) -> placement -> workers -> exports
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hpcinfer.cluster import (
    HardwareProfile,
    PlacementPlan,
    apply_env,
    cpu_affinity,
    plan_placement,
    resolve_profile,
)
from hpcinfer.engines.tiny_model import TINY_MODEL_NAME, ensure_tiny_model
from hpcinfer.engines.vllm_offline import EngineSetup, engine_env
from hpcinfer.errors import EngineError, SpecError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.inputs import PromptTemplate, display_name, expand_inputs, read_records
from hpcinfer.inputs.options import apply_max_tokens_field
from hpcinfer.outputs.exporters import check_exports, export_all
from hpcinfer.outputs.store import OutputStore, unit_file_name
from hpcinfer.run.coordinator import Coordinator, WorkerHandle
from hpcinfer.run.plan import (
    UnitSummary,
    WorkUnit,
    cut_units,
    file_digests,
    mark_duplicates,
    summarize,
)
from hpcinfer.run.progress import ProgressView
from hpcinfer.run.runinfo import write_run_json
from hpcinfer.run.worker import WorkerConfig
from hpcinfer.spec import JobSpec, digest_identity

ENGINE_DEFAULT_MAX_NUM_SEQS = 256
REAP_GRACE_S = 60.0


def max_inflight(spec: JobSpec) -> int:
    """Default: the engine's batch plus two units, so a unit is always queued behind a full
    batch and the engine never waits for the coordinator at a unit boundary."""
    if spec.workers.max_inflight is not None:
        return spec.workers.max_inflight
    return (spec.engine.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS) + 2 * spec.workers.unit_size


@dataclass
class RunOptions:
    """How this invocation behaves; none of it changes what the rows contain."""

    restart: bool = False
    quiet: bool = False
    cwd: Path = field(default_factory=Path.cwd)


@dataclass
class RunSummary:
    status: str
    exit_code: ExitCode
    out_dir: str
    records_total: int
    records_ok: int
    records_failed: int
    records_this_run: int
    resumed: bool
    prompt_tokens: int
    output_tokens: int
    wall_s: float
    generation_s: float | None
    output_tokens_per_s: float
    workers: list[dict[str, Any]]
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self), exit_code=int(self.exit_code))


@dataclass
class _Inputs:
    files: list[Path]
    names: list[str]
    template: PromptTemplate | None


PLAN_FIRST_BYTES = 8 << 20


@dataclass
class _Plan:
    summaries: list[UnitSummary]
    done: list[UnitSummary]

    @property
    def todo_units(self) -> int:
        return len(self.summaries) - len(self.done)

    @property
    def total_records(self) -> int:
        return sum(s.size for s in self.summaries)

    @property
    def todo_records(self) -> int:
        return self.total_records - sum(s.size for s in self.done)


def _is_small(inputs: _Inputs) -> bool:
    return sum(f.stat().st_size for f in inputs.files) <= PLAN_FIRST_BYTES


def _make_plan(spec: JobSpec, inputs: _Inputs, cwd: Path, store: OutputStore) -> _Plan:
    """Pass 1: every unit's id and size, without holding prompts; recorded in the manifest."""
    summaries = [summarize(u) for u in _units(spec, inputs, cwd)]
    store.record_plan((s.id, s.size) for s in summaries)
    committed = store.committed()
    return _Plan(summaries, [s for s in summaries if unit_file_name(s.id) in committed])


def _placement(spec: JobSpec, profile: HardwareProfile, units_left: int | None) -> PlacementPlan:
    """One worker per device group, or fewer (with more devices each on CPU) when the job
    has fewer units than that and the user did not fix the count."""
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    placement = plan_placement(profile, workers=spec.workers.count, tp=tp, mode=mode)
    if spec.workers.count is None and units_left and units_left < len(placement.placements):
        placement = plan_placement(profile, workers=units_left, tp=tp, mode=mode)
    return placement


def resolve_model(spec: JobSpec, cwd: Path) -> tuple[str, str]:
    """(path or HF id given to vLLM, display name). No model: the built-in tiny model."""
    if spec.model is None:
        return str(ensure_tiny_model()), TINY_MODEL_NAME
    candidate = Path(spec.model).expanduser()
    if not candidate.is_absolute():
        candidate = cwd / candidate
    looks_like_path = spec.model.startswith((".", "/", "~")) or candidate.exists()
    if looks_like_path:
        if not candidate.is_dir():
            raise SpecError(f"model: {spec.model!r} is not a model directory (no such directory)")
        if not (candidate / "config.json").exists() and not (candidate / "params.json").exists():
            raise SpecError(
                f"model: {spec.model!r} is not a model directory (no config.json in {candidate}); "
                "point --model at the folder holding config.json and the weights"
            )
        return str(candidate), spec.model
    return spec.model, spec.model


def _open_inputs(spec: JobSpec, cwd: Path) -> _Inputs:
    if not spec.inputs.paths:
        raise SpecError(
            "inputs.paths is empty: name input files, e.g. `hpcinfer run prompts.txt`, "
            "or set inputs.paths in the spec"
        )
    files = expand_inputs(spec.inputs.paths, cwd=cwd)
    names = [display_name(f, cwd=cwd) for f in files]
    return _Inputs(files, names, PromptTemplate.from_option(spec.inputs.template))


def _units(spec: JobSpec, inputs: _Inputs, cwd: Path) -> Iterator[WorkUnit]:
    fmt = None if spec.inputs.format == "auto" else spec.inputs.format
    records = read_records(
        inputs.files,
        cwd=cwd,
        fmt=fmt,
        prompt_field=spec.inputs.prompt_field,
        template=inputs.template,
        id_field=spec.inputs.id_field,
    )
    records = apply_max_tokens_field(records, spec.inputs.max_tokens_field)
    return cut_units(mark_duplicates(records), spec.workers.unit_size)


def run_job(spec: JobSpec, options: RunOptions) -> RunSummary:
    started = time.monotonic()
    cwd = options.cwd
    check_exports(spec.output)
    inputs = _open_inputs(spec, cwd)
    out_dir = Path(spec.output.dir)
    if not out_dir.is_absolute():
        out_dir = cwd / out_dir
    store = OutputStore(out_dir)
    identity = spec.identity() | {"input_files": file_digests(inputs.files, inputs.names)}
    store.lock()
    resumed = store.prepare(digest_identity(identity), identity, restart=options.restart)
    profile = resolve_profile(spec.workers.profile)
    # Small inputs are planned first (milliseconds), so a small job starts only the workers
    # it can use, each with more devices; large ones are planned while the workers start.
    plan = _make_plan(spec, inputs, cwd, store) if _is_small(inputs) else None
    units_left = plan.todo_units if plan else (store.units_left() if resumed else None)
    placement = _placement(spec, profile, units_left)
    n_spawn = len(placement.placements)
    if units_left is not None:
        n_spawn = min(n_spawn, units_left)  # a rerun of a finished job starts no engine
    # Workers start now and import vLLM while this process plans the job and finds the model.
    spawned = [_spawn_worker(i, placement, profile, spec, store) for i in range(n_spawn)]
    handles = spawned
    result = None
    try:
        if plan is None:
            plan = _make_plan(spec, inputs, cwd, store)
        summaries, done, todo_units = plan.summaries, plan.done, plan.todo_units
        todo_records = plan.todo_records
        model_path, model_name = (
            resolve_model(spec, cwd) if todo_units else ("", spec.model or TINY_MODEL_NAME)
        )
        for surplus in spawned[todo_units:]:
            _send_config(surplus, None)
        handles = spawned[:todo_units]
        for handle in handles:
            setup = _engine_setup(spec, profile, model_path, model_name, len(handles))
            _send_config(
                handle,
                WorkerConfig(
                    worker=handle.index,
                    setup=setup,
                    out_dir=str(store.root),
                    max_inflight=max_inflight(spec),
                ),
            )
        view = ProgressView(
            total=plan.total_records,
            done=sum(s.size for s in done),
            quiet=options.quiet,
        )
        for warning in placement.warnings:
            view.warn(warning)
        pending = (u for u in _units(spec, inputs, cwd) if not store.is_committed(u.id))
        coordinator = Coordinator(
            handles,
            pending,
            todo_records,
            unit_size=spec.workers.unit_size,
            max_inflight=max_inflight(spec),
            on_progress=view.advance,
            time_limit_s=spec.time_limit_seconds(),
        )
        restore = coordinator.install_signal_handlers()
        try:
            with view:
                result = coordinator.run()
        finally:
            restore()
    except BaseException:
        _reap(spawned, grace_s=0)
        raise

    counts = export_all(store, [s.id for s in summaries], spec.output, out_dir)
    _reap(spawned, grace_s=REAP_GRACE_S)
    complete = counts["records"] == plan.total_records
    wall = time.monotonic() - started
    failures = [h for h in handles if not h.clean_exit]
    status, code, message = _outcome(complete, counts, result, failures, store)
    workers_info = [
        {
            "worker": h.index,
            "devices": [d.label for d in placement.placements[h.index].group.devices],
            "startup_s": h.startup_s,
            "units": h.committed_units,
            **h.stats,
            "error": h.error,
            "log": str(h.log),
        }
        for h in handles
    ]
    this_run = sum(h.stats["records"] for h in handles)
    out_tokens_run = sum(h.stats["output_tokens"] for h in handles)
    gen_s = result.generation_s if result and result.generation_s else None
    summary = RunSummary(
        status=status,
        exit_code=code,
        out_dir=str(out_dir),
        records_total=plan.total_records,
        records_ok=counts["ok"],
        records_failed=counts["error"],
        records_this_run=this_run,
        resumed=resumed,
        prompt_tokens=counts["prompt_tokens"],
        output_tokens=counts["output_tokens"],
        wall_s=round(wall, 3),
        generation_s=gen_s,
        output_tokens_per_s=round(out_tokens_run / gen_s, 1) if gen_s else 0.0,
        workers=workers_info,
        message=message,
    )
    write_run_json(out_dir, spec, summary.as_dict(), profile, placement, model_path)
    return summary


def _outcome(
    complete: bool,
    counts: dict[str, int],
    result: Any,
    failures: list[WorkerHandle],
    store: OutputStore,
) -> tuple[str, ExitCode, str]:
    if complete:
        notes = [
            f"worker {h.index} {h.error} (log: {h.log}); the other workers redid its units"
            for h in failures
        ]
        if counts["error"]:
            notes.insert(0, f'{counts["error"]} record(s) failed; see rows with status "error"')
            return "finished_with_errors", ExitCode.RECORD_ERRORS, "; ".join(notes)
        return "ok", ExitCode.OK, "; ".join(notes)
    if result is not None and result.stopped_early:
        return (
            "incomplete",
            ExitCode.INCOMPLETE,
            (
                f"stopped early ({result.stop_reason}); committed work is kept: "
                "rerun the same command to resume"
            ),
        )
    details = "; ".join(f"worker {h.index}: {h.error} (log: {h.log})" for h in failures)
    # A worker that reported its error has said why; one that died silently (killed, out of
    # memory, a crash in native code) is explained by the end of its log.
    silent = [h for h in failures if (h.error or "").startswith("exited with code")]
    tail = _log_tail(silent[0].log) if silent else ""
    raise EngineError(
        f"the run failed: {details or 'workers stopped before the work was done'}; committed "
        f"units in {store.root} are kept, rerun to resume"
        + (f"\nlast log lines:\n{tail}" if tail else "")
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  " + line for line in text[-lines:])


def _engine_setup(
    spec: JobSpec, profile: HardwareProfile, model_path: str, model_name: str, n_workers: int
) -> EngineSetup:
    return EngineSetup(
        model_path=model_path,
        model_name=model_name,
        engine=spec.engine,
        sampling=spec.sampling,
        on_cpu=profile.vendor == "cpu",
        workers_on_node=n_workers,
    )


def _spawn_worker(
    index: int,
    placement: PlacementPlan,
    profile: HardwareProfile,
    spec: JobSpec,
    store: OutputStore,
) -> WorkerHandle:
    """Start a worker bound to its devices; its configuration is sent once the job is planned."""
    env = apply_env(os.environ, placement.placements[index].env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    cores = cpu_affinity(placement.placements[index].group)
    if cores:
        env["HPCINFER_CPU_AFFINITY"] = ",".join(str(c) for c in sorted(cores))
    env.update(engine_env(_engine_setup(spec, profile, "", "", len(placement.placements))))
    parent_sock, child_sock = socket.socketpair()
    log = store.log_path(index)
    with log.open("ab") as log_handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcinfer.run.worker", str(child_sock.fileno())],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            pass_fds=(child_sock.fileno(),),
        )
    child_sock.close()
    return WorkerHandle(index=index, proc=proc, conn=Connection(parent_sock.detach()), log=log)


def _send_config(handle: WorkerHandle, config: WorkerConfig | None) -> None:
    # A worker that died already is found by the coordinator (EOF on its connection).
    with contextlib.suppress(OSError):
        handle.conn.send(config)


def _reap(handles: list[WorkerHandle], grace_s: float) -> None:
    """Wait for workers to exit (they close their engines), then kill any that hang."""
    deadline = time.monotonic() + grace_s
    for handle in handles:
        try:
            handle.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait()
        handle.conn.close()
