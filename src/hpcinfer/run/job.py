"""`hpcinfer run` as a library call: spec in, results and a summary out.

spec -> inputs -> plan (units; committed ones skipped) -> placement -> workers -> exports

This module holds the job's orchestration only, one named step each (`_run` lists them):
what is decided from the spec lives in run.policy, the inputs and plan in run.job_inputs,
starting workers in run.spawn, the work itself in run.coordinator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcinfer.cluster import HardwareProfile, PlacementPlan, resolve_profile
from hpcinfer.cluster.allocation import remaining_walltime_s
from hpcinfer.core.models import resolve_model
from hpcinfer.core.time_limits import effective_time_limit
from hpcinfer.core.tiny_model import TINY_MODEL_NAME
from hpcinfer.engines.kinds import kind_of
from hpcinfer.engines.openai_engine import Target
from hpcinfer.engines.targets import resolve_targets
from hpcinfer.errors import EngineError, SpecError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.logtail import log_tail
from hpcinfer.outputs.exporters import check_exports, export_all
from hpcinfer.outputs.store import OutputStore
from hpcinfer.run import figures
from hpcinfer.run.coordinator import Coordinator, CoordinatorResult, WorkerHandle
from hpcinfer.run.job_inputs import (
    JobInputs,
    JobPlan,
    is_small,
    make_plan,
    open_inputs,
    pending_units,
)
from hpcinfer.run.joins import Joined, JoinListener
from hpcinfer.run.options import RunOptions, output_dir
from hpcinfer.run.plan import file_digests
from hpcinfer.run.policy import (
    ENGINE_DEFAULT_MAX_NUM_SEQS,
    dispatching,
    engine_setup,
    engine_vars_for,
    job_placement,
    max_inflight,
    rank_placement,
)
from hpcinfer.run.preflight import (
    check_lora,
    check_model_present,
    served_model,
    workers_notes,
)
from hpcinfer.run.progress import ProgressView
from hpcinfer.run.ranks import JOIN_WAIT_S, RankContext, coordinator_hosts, make_rendezvous
from hpcinfer.run.runinfo import write_run_json
from hpcinfer.run.schedule import static_owners
from hpcinfer.run.spawn import reap_workers, spawn_worker
from hpcinfer.run.summary import RunSummary, WorkerSummary
from hpcinfer.run.worker import WorkerConfig, progress_interval_s
from hpcinfer.spec import JobSpec, digest_identity

if TYPE_CHECKING:
    from hpcinfer.run.ray_job import RayWorkers

REAP_GRACE_S = 60.0


def run_job(spec: JobSpec, options: RunOptions, ctx: RankContext | None = None) -> RunSummary:
    """The whole job, or, as rank 0 of a launch, the job over every rank's workers."""
    if options.started is None:
        options = dataclasses.replace(options, started=time.monotonic())
    check_model_present(spec, options.cwd)
    check_lora(spec, options.cwd)
    if spec.workers.launcher == "ray":
        return _run_on_ray(spec, options)
    if kind_of(spec).starts_fleet(spec):
        from hpcinfer.run.fleet_job import run_with_fleet

        return run_with_fleet(spec, options, lambda job: run_job(job, options, ctx))
    if ctx is None:
        return _run(spec, options, None)
    rendezvous = make_rendezvous(ctx, output_dir(spec, options.cwd))
    bind, advertise = coordinator_hosts(ctx)
    joins = JoinListener(bind, advertise, ctx.info.world_size, JOIN_WAIT_S)
    try:
        rendezvous.share(joins.address, joins.key)
        return _run(spec, options, _Cluster(ctx, joins))
    finally:
        joins.close()
        rendezvous.finish()


def _run_on_ray(spec: JobSpec, options: RunOptions) -> RunSummary:
    """The job's workers as actors of a Ray cluster; this process coordinates them."""
    from hpcinfer.run.ray_job import ray_workers

    with ray_workers(spec) as actors:
        try:
            return _run(spec, options, _Cluster(None, actors.joins, actors))
        except EngineError as exc:
            failed = actors.failures()
            raise EngineError(f"{exc}; {failed}" if failed else str(exc)) from None


@dataclass
class _Cluster:
    """Workers that join over TCP: other ranks' (ctx), or Ray actors (ray: this process
    runs no worker of its own)."""

    ctx: RankContext | None
    joins: JoinListener
    ray: RayWorkers | None = None


def _run(spec: JobSpec, options: RunOptions, cluster: _Cluster | None) -> RunSummary:
    """prepare the store -> start workers (they import vLLM meanwhile) -> plan -> configure
    the workers -> coordinate -> export and summarize."""
    started = options.started or time.monotonic()
    job = _prepare(spec, options)
    view = ProgressView(quiet=options.quiet, out_dir=job.store.root)
    try:  # the directory is released however the run ends: a library caller may run again
        workers = _start_workers(spec, job, cluster)
        spec = workers.spec
        try:
            outcome = _coordinate(spec, options, job, workers, cluster, view)
        except BaseException:
            reap_workers(workers.spawned, grace_s=0)
            view.finished()
            raise
        return _finish(spec, job, workers, outcome, started, view)
    finally:
        job.store.unlock()


@dataclass
class _Prepared:
    """A job whose output store is locked and checked against the spec."""

    cwd: Path
    inputs: JobInputs
    out_dir: Path
    store: OutputStore
    resumed: bool
    profile: HardwareProfile
    plan: JobPlan | None
    """Planned before the workers start for small inputs, else while they start."""
    units_left: int | None
    """Units to do, when known already."""


def _prepare(spec: JobSpec, options: RunOptions) -> _Prepared:
    cwd = options.cwd
    check_exports(spec.output)
    inputs = open_inputs(spec, cwd)
    out_dir = output_dir(spec, cwd)
    store = OutputStore(out_dir)
    identity = spec.identity() | {"input_files": file_digests(inputs.files, inputs.names)}
    retry = options.retry_errors
    if retry and options.restart:
        raise SpecError("--retry-errors keeps the ok rows, --restart discards them: choose one")
    store.lock()
    try:
        resumed = store.prepare(
            digest_identity(identity), identity, restart=options.restart, retry_errors=retry
        )
    except BaseException:
        store.unlock()
        raise
    profile = resolve_profile(spec.workers.profile)
    # Small inputs are planned first (milliseconds), so a small job starts only the workers
    # it can use, each with more devices; large ones are planned while the workers start
    # (a retry reads its error rows first: it may have to start workers for a finished job).
    plan = make_plan(spec, inputs, cwd, store, retry) if is_small(inputs) or retry else None
    if plan is not None and plan.retry is not None and options.on_note is not None:
        never_run = plan.todo_records - plan.retry.records
        options.on_note(plan.retry.describe(plan.total_records, never_run))
    units_left = plan.todo_units if plan else (store.units_left() if resumed else None)
    return _Prepared(cwd, inputs, out_dir, store, resumed, profile, plan, units_left)


@dataclass
class _Workers:
    """The workers this rank started, where, and the servers they will talk to."""

    placement: PlacementPlan
    spawned: list[WorkerHandle]
    node_workers: int
    total_workers: int
    targets: list[Target]
    n_endpoints: int
    spec: JobSpec
    """The job's spec with the model its servers serve (--engine openai without --model)."""


def _start_workers(spec: JobSpec, job: _Prepared, cluster: _Cluster | None) -> _Workers:
    # A finished job reruns without its servers (a one-shot fleet is not even started).
    found = resolve_targets(spec, job.cwd) if dispatching(spec) and job.units_left != 0 else None
    targets, n_endpoints = (found.endpoints, found.expected) if found else ([], 0)
    if found:  # the servers' model, checked (after the identity: a default is no change)
        spec = spec.model_copy(update={"model": served_model(spec, targets)})
    if cluster is None:
        placement = job_placement(spec, job.profile, job.units_left)
    elif cluster.ray is not None:
        placement = cluster.ray.placement(job.profile)
    else:
        assert cluster.ctx is not None
        placement = rank_placement(spec, job.profile, cluster.ctx)
    n_spawn = len(placement.placements)
    if job.units_left is not None:
        n_spawn = min(n_spawn, job.units_left)  # a rerun of a finished job starts no engine
    ranks = cluster.ctx.info if cluster and cluster.ctx else None
    node_workers = len(placement.placements) * (ranks.local_size if ranks else 1)
    total_workers = len(placement.placements) * (ranks.world_size if ranks else 1)
    if cluster is not None and cluster.ray is not None:
        # The actors join (and import vLLM) while this process plans the job.
        total_workers = cluster.ray.start(job.store, job.units_left)
    # Workers start now and import vLLM while this process plans the job and finds the model.
    engine_vars = engine_vars_for(spec, job.profile, node_workers)
    spawned = [
        spawn_worker(placement.placements[i], engine_vars, job.store.log_path(i), index=i)
        for i in range(n_spawn)
    ]
    return _Workers(placement, spawned, node_workers, total_workers, targets, n_endpoints, spec)


def _model(spec: JobSpec, cwd: Path, todo_units: int) -> tuple[str, str]:
    """(path, name) of the model the workers load; nothing is resolved when none will."""
    if dispatching(spec):
        # the dispatcher learns the served name from its endpoints (rows carry that)
        return "", spec.model or ""
    if todo_units:
        return resolve_model(spec, cwd)
    return "", spec.model or TINY_MODEL_NAME


@dataclass
class _Coordinated:
    """What coordinating the workers left: the plan, the workers that took part, the result."""

    plan: JobPlan
    model_path: str
    handles: list[WorkerHandle]
    result: CoordinatorResult | None
    never_joined: str
    """Who was expected and never joined (ranks, or Ray actors), or ""."""


def _coordinate(
    spec: JobSpec,
    options: RunOptions,
    job: _Prepared,
    workers: _Workers,
    cluster: _Cluster | None,
    view: ProgressView,
) -> _Coordinated:
    if job.plan is None:
        view.set_phase("planning: reading the inputs", force=True)
    plan = job.plan or make_plan(spec, job.inputs, job.cwd, job.store)  # (retry: planned)
    model_path, model_name = _model(spec, job.cwd, plan.todo_units)
    for surplus in workers.spawned[plan.todo_units :]:
        _send_config(surplus, None)
    handles = workers.spawned[: plan.todo_units]
    configure = _configurer(spec, job, workers, model_path, model_name)
    for handle in handles:
        configure(handle, workers.node_workers if cluster else len(handles))
    view.planned(plan.total_records, plan.total_records - plan.todo_records)
    notes = workers_notes(spec, workers.placement, plan.todo_units) if cluster is None else []
    for warning in [*workers.placement.warnings, *notes]:
        view.warn(warning)
    time_limit, limit_source = _time_limit(spec, view)
    pending = pending_units(spec, job.inputs, job.cwd, job.store, plan)
    owners = static_owners(job.inputs.names, max(workers.total_workers, 1))
    coordinator = Coordinator(
        handles,
        pending,
        plan.todo_records,
        unit_size=spec.workers.unit_size,
        max_inflight=max_inflight(spec, workers.n_endpoints),
        on_progress=view.advance,
        on_ready=view.generation_started,
        observer=view,
        time_limit_s=time_limit,
        time_limit_name=("walltime limit" if limit_source == "walltime" else "time limit"),
        owner_of=(
            (lambda u: owners[u.records[0].source]) if spec.workers.schedule == "static" else None
        ),
        batch=(
            max_inflight(spec, workers.n_endpoints)
            if dispatching(spec)
            else spec.engine.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS
        ),
        joins=cluster.joins if cluster else None,
        on_join=_admitter(job.store, handles, configure) if cluster is not None else None,
    )
    remote_only = cluster is not None and cluster.ray is not None
    if handles or remote_only:
        view.workers_starting(len(handles) or workers.total_workers)
    with view:
        result = coordinator.run(options.stop)
    never_joined = ""
    if cluster is not None:
        cluster.joins.close()
        handles = coordinator.workers
        if cluster.ray is not None:
            never_joined = cluster.ray.never_joined(job.store.logs_dir)
        elif missing := cluster.joins.missing_ranks():
            never_joined = f"rank(s) {missing} never joined (see {job.store.logs_dir})"
    return _Coordinated(plan, model_path, handles, result, never_joined)


def _configurer(
    spec: JobSpec, job: _Prepared, workers: _Workers, model_path: str, model_name: str
) -> Callable[[WorkerHandle, int], None]:
    """Sends a worker (this rank's, or one that joined from another) its configuration."""

    def configure(handle: WorkerHandle, workers_on_node: int) -> None:
        setup = engine_setup(
            spec,
            job.profile,
            model_path,
            model_name,
            workers_on_node,
            cwd=job.cwd,
            targets=workers.targets,
        )
        local_dir = spec.output.local_dir
        _send_config(
            handle,
            WorkerConfig(
                worker=handle.index,
                setup=setup,
                out_dir=str(job.store.root),
                max_inflight=max_inflight(spec, workers.n_endpoints),
                local_dir=str(job.cwd / local_dir) if local_dir else None,
                progress_interval_s=progress_interval_s(workers.total_workers),
            ),
        )

    return configure


def _time_limit(spec: JobSpec, view: ProgressView) -> tuple[float | None, str]:
    """The run's time limit and its source; one the scheduler sets is shown."""
    time_limit, limit_source = effective_time_limit(
        spec, remaining_walltime_s() if spec.time_limit is None else None
    )
    if limit_source == "walltime" and time_limit is not None:
        view.warn(
            f"the scheduler ends this job in {time_limit:.0f}s plus a margin: new work "
            "stops then; rerun (or --resubmit) to continue"
        )
    return time_limit, limit_source


def _finish(
    spec: JobSpec,
    job: _Prepared,
    workers: _Workers,
    done: _Coordinated,
    started: float,
    view: ProgressView,
) -> RunSummary:
    """Export, reap the workers, and write the summary into run.json."""
    store, plan, handles, result = job.store, done.plan, done.handles, done.result
    view.exporting()
    counts = export_all(store, [s.id for s in plan.summaries], spec.output, job.out_dir)
    reap_workers(workers.spawned, grace_s=REAP_GRACE_S)
    for handle in handles:
        handle.conn.close()
    store.remove_cut_commits()
    complete = counts["records"] == plan.total_records
    wall_s = time.monotonic() - started
    failures = [h for h in handles if not h.clean_exit]
    try:
        status, code, message = _outcome(complete, counts, result, failures, store)
    except EngineError:
        view.finished()
        raise
    message = "; ".join(m for m in (message, done.never_joined) if m)
    out_tokens_run = sum(h.stats["output_tokens"] for h in handles)
    gen_s = result.generation_s if result and result.generation_s else None
    summary = RunSummary(
        status=status,
        exit_code=code,
        out_dir=str(job.out_dir),
        records_total=plan.total_records,
        records_ok=counts["ok"],
        records_failed=counts["error"],
        records_this_run=sum(h.stats["records"] for h in handles),
        resumed=job.resumed,
        prompt_tokens=counts["prompt_tokens"],
        output_tokens=counts["output_tokens"],
        wall_s=round(wall_s, 3),
        generation_s=gen_s,
        output_tokens_per_s=round(figures.per_s(out_tokens_run, gen_s), 1),
        workers=[_worker_summary(h) for h in handles],
        message=message,
        endpoints={
            k.removeprefix("endpoint "): v for k, v in counts.items() if k.startswith("endpoint ")
        },
    )
    write_run_json(job.out_dir, spec, summary, job.profile, workers.placement, done.model_path)
    view.finished()
    return summary


def _worker_summary(handle: WorkerHandle) -> WorkerSummary:
    return WorkerSummary(
        worker=handle.index,
        rank=handle.rank,
        host=handle.host,
        devices=handle.devices,
        startup_s=handle.startup_s,
        startup=handle.startup,
        units=handle.committed_units,
        **handle.stats,
        error=handle.error,
        log=str(handle.log),
    )


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
    tail = log_tail(silent[0].log, lines=15) if silent else ""
    raise EngineError(
        f"the run failed: {details or 'workers stopped before the work was done'}; committed "
        f"units in {store.root} are kept, rerun to resume"
        + (f"\nlast log lines:\n{tail}" if tail else "")
    )


def _admitter(
    store: OutputStore,
    local: list[WorkerHandle],
    configure: Any,
) -> Any:
    """What the coordinator does with a worker that joined from another rank."""
    taken = {h.index for h in local}

    def admit(joined: Joined) -> WorkerHandle:
        index = joined.rank * joined.slots + joined.slot
        while index in taken:  # ranks with uneven worker counts: keep indexes unique
            index = max(taken) + 1
        taken.add(index)
        handle = WorkerHandle(
            index=index,
            proc=None,
            conn=joined.conn,
            log=store.log_path(index),
            rank=joined.rank,
            host=joined.host,
            devices=joined.devices,
        )
        configure(handle, joined.node_workers)
        return handle

    return admit


def _send_config(handle: WorkerHandle, config: WorkerConfig | None) -> None:
    # A worker that died already is found by the coordinator (EOF on its connection).
    with contextlib.suppress(OSError):
        handle.conn.send(config)
