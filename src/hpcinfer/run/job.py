"""`hpcinfer run` as a library call: spec in, results and a summary out.

spec -> inputs -> plan (units; committed ones skipped) -> placement -> workers -> exports
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.cluster import (
    HardwareProfile,
    PlacementPlan,
    plan_placement,
    resolve_profile,
)
from hpcinfer.cluster.allocation import remaining_walltime_s
from hpcinfer.cluster.devices import DeviceGroup
from hpcinfer.cluster.placement import Placement
from hpcinfer.core.models import resolve_model
from hpcinfer.core.time_limits import effective_time_limit
from hpcinfer.core.tiny_model import TINY_MODEL_NAME
from hpcinfer.engines.kinds import ENGINE_KIND_ENV, kind_of
from hpcinfer.engines.openai_engine import Target
from hpcinfer.engines.targets import client_setup, resolve_targets
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.errors import EngineError, SpecError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.inputs import PromptTemplate, display_name, expand_inputs, read_records
from hpcinfer.inputs.options import apply_max_tokens_field
from hpcinfer.inputs.template_check import check_template
from hpcinfer.logtail import log_tail
from hpcinfer.outputs.exporters import check_exports, export_all
from hpcinfer.outputs.store import OutputStore, unit_file_name
from hpcinfer.run.coordinator import Coordinator, WorkerHandle
from hpcinfer.run.joins import Joined, JoinListener
from hpcinfer.run.options import RunOptions, output_dir
from hpcinfer.run.plan import (
    UnitSummary,
    WorkUnit,
    cut_units,
    file_digests,
    mark_duplicates,
    summarize,
)
from hpcinfer.run.progress import ProgressView
from hpcinfer.run.ranks import (
    JOIN_WAIT_S,
    RankContext,
    coordinator_hosts,
    make_rendezvous,
)
from hpcinfer.run.runinfo import write_run_json
from hpcinfer.run.schedule import static_owners
from hpcinfer.run.spawn import reap_workers, spawn_worker
from hpcinfer.run.summary import RunSummary, WorkerSummary
from hpcinfer.run.worker import WorkerConfig, progress_interval_s
from hpcinfer.spec import JobSpec, digest_identity

ENGINE_DEFAULT_MAX_NUM_SEQS = 256
REAP_GRACE_S = 60.0


def max_inflight(spec: JobSpec, endpoints: int = 0) -> int:
    """Default: the engine's batch plus two units, so a unit is always queued behind a full
    batch and the engine never waits for the coordinator at a unit boundary; a dispatcher's
    batch is every endpoint's bound of requests in flight."""
    if spec.workers.max_inflight is not None:
        return spec.workers.max_inflight
    if dispatching(spec):
        batch = max(endpoints, 1) * spec.client.inflight_per_endpoint
    else:
        batch = spec.engine.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS
    return batch + 2 * spec.workers.unit_size


def dispatching(spec: JobSpec) -> bool:
    """Workers are HTTP dispatchers to servers, not engines of their own."""
    return kind_of(spec).needs_servers


def dispatcher_placement(profile: HardwareProfile, count: int) -> PlacementPlan:
    """Dispatchers hold no device (the servers do): `count` workers, unbound."""
    placements = [
        Placement(worker=i, group=DeviceGroup(()), env={}, shared=False) for i in range(count)
    ]
    return PlacementPlan(profile, 1, "dispatch", placements, [], [])


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
    if not kind_of(spec).needs_devices:
        return dispatcher_placement(profile, spec.workers.count or 1)
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    placement = plan_placement(profile, workers=spec.workers.count, tp=tp, mode=mode)
    if spec.workers.count is None and units_left and units_left < len(placement.placements):
        placement = plan_placement(profile, workers=units_left, tp=tp, mode=mode)
    return placement


def rank_placement(spec: JobSpec, profile: HardwareProfile, ctx: RankContext) -> PlacementPlan:
    """A rank's workers: with several ranks on the node, the one device group of its local
    rank (simple_test.py's compact tile mapping, gpu_tile_compact.sh);
    alone on its node, one worker per group."""
    if ctx.info.local_size == 1 or not kind_of(spec).needs_devices:
        return _placement(spec, profile, None)
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    node = plan_placement(profile, workers=ctx.info.local_size, tp=tp, mode=mode)
    return dataclasses.replace(node, placements=[node.placements[ctx.info.local_rank]])


def _open_inputs(spec: JobSpec, cwd: Path) -> _Inputs:
    if not spec.inputs.paths:
        raise SpecError(
            "inputs.paths is empty: name input files, e.g. `hpcinfer run prompts.txt`, "
            "or set inputs.paths in the spec"
        )
    files = expand_inputs(spec.inputs.paths, cwd=cwd)
    names = [display_name(f, cwd=cwd) for f in files]
    template = PromptTemplate.from_option(spec.inputs.template)
    check_template(
        template, files, cwd=cwd, fmt=None if spec.inputs.format == "auto" else spec.inputs.format
    )
    return _Inputs(files, names, template)


def _units(spec: JobSpec, inputs: _Inputs, cwd: Path) -> Iterator[WorkUnit]:
    fmt = None if spec.inputs.format == "auto" else spec.inputs.format
    records = read_records(
        inputs.files,
        cwd=cwd,
        fmt=fmt,
        prompt_field=spec.inputs.prompt_field,
        template=inputs.template,
        id_field=spec.inputs.id_field,
        sampling_fields=spec.inputs.sampling_fields,
        max_tokens_field=spec.inputs.max_tokens_field,
    )
    records = apply_max_tokens_field(records, spec.inputs.max_tokens_field)
    return cut_units(mark_duplicates(records), spec.workers.unit_size)


def run_job(spec: JobSpec, options: RunOptions, ctx: RankContext | None = None) -> RunSummary:
    """The whole job, or, as rank 0 of a launch, the job over every rank's workers."""
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


@dataclass
class _Cluster:
    ctx: RankContext
    joins: JoinListener


def _run(spec: JobSpec, options: RunOptions, cluster: _Cluster | None) -> RunSummary:
    started = time.monotonic()
    cwd = options.cwd
    check_exports(spec.output)
    inputs = _open_inputs(spec, cwd)
    out_dir = output_dir(spec, cwd)
    store = OutputStore(out_dir)
    identity = spec.identity() | {"input_files": file_digests(inputs.files, inputs.names)}
    store.lock()
    resumed = store.prepare(digest_identity(identity), identity, restart=options.restart)
    profile = resolve_profile(spec.workers.profile)
    # Small inputs are planned first (milliseconds), so a small job starts only the workers
    # it can use, each with more devices; large ones are planned while the workers start.
    plan = _make_plan(spec, inputs, cwd, store) if _is_small(inputs) else None
    units_left = plan.todo_units if plan else (store.units_left() if resumed else None)
    # A finished job reruns without its servers (a one-shot fleet is not even started).
    found = resolve_targets(spec, cwd) if dispatching(spec) and units_left != 0 else None
    targets, n_endpoints = (found.endpoints, found.expected) if found else ([], 0)
    if cluster is None:
        placement = _placement(spec, profile, units_left)
    else:
        placement = rank_placement(spec, profile, cluster.ctx)
    n_spawn = len(placement.placements)
    if units_left is not None:
        n_spawn = min(n_spawn, units_left)  # a rerun of a finished job starts no engine
    node_workers = len(placement.placements) * (cluster.ctx.info.local_size if cluster else 1)
    total_workers = len(placement.placements) * (cluster.ctx.info.world_size if cluster else 1)
    # Workers start now and import vLLM while this process plans the job and finds the model.
    engine_vars = engine_vars_for(spec, profile, node_workers)
    spawned = [
        spawn_worker(placement.placements[i], engine_vars, store.log_path(i), index=i)
        for i in range(n_spawn)
    ]
    handles = spawned
    result = None
    never_joined: list[int] = []
    try:
        if plan is None:
            plan = _make_plan(spec, inputs, cwd, store)
        summaries, done, todo_units = plan.summaries, plan.done, plan.todo_units
        todo_records = plan.todo_records
        if dispatching(spec):
            # the dispatcher learns the served name from its endpoints (rows carry that)
            model_path, model_name = "", spec.model or ""
        elif todo_units:
            model_path, model_name = resolve_model(spec, cwd)
        else:
            model_path, model_name = "", spec.model or TINY_MODEL_NAME
        for surplus in spawned[todo_units:]:
            _send_config(surplus, None)
        handles = spawned[:todo_units]

        def configure(handle: WorkerHandle, workers_on_node: int) -> None:
            setup = _engine_setup(
                spec, profile, model_path, model_name, workers_on_node, cwd=cwd, targets=targets
            )
            _send_config(
                handle,
                WorkerConfig(
                    worker=handle.index,
                    setup=setup,
                    out_dir=str(store.root),
                    max_inflight=max_inflight(spec, n_endpoints),
                    local_dir=str(cwd / spec.output.local_dir) if spec.output.local_dir else None,
                    progress_interval_s=progress_interval_s(total_workers),
                ),
            )

        for handle in handles:
            configure(handle, node_workers if cluster else len(handles))
        on_join = None
        if cluster is not None:
            on_join = _admitter(store, handles, configure)
        view = ProgressView(
            total=plan.total_records,
            done=sum(s.size for s in done),
            quiet=options.quiet,
        )
        for warning in placement.warnings:
            view.warn(warning)
        time_limit, limit_source = effective_time_limit(
            spec, remaining_walltime_s() if spec.time_limit is None else None
        )
        if limit_source == "walltime" and time_limit is not None:
            view.warn(
                f"the scheduler ends this job in {time_limit:.0f}s plus a margin: new work "
                "stops then; rerun (or --resubmit) to continue"
            )
        pending = (u for u in _units(spec, inputs, cwd) if not store.is_committed(u.id))
        owners = static_owners(inputs.names, max(total_workers, 1))
        coordinator = Coordinator(
            handles,
            pending,
            todo_records,
            unit_size=spec.workers.unit_size,
            max_inflight=max_inflight(spec, n_endpoints),
            on_progress=view.advance,
            on_ready=view.generation_started,
            time_limit_s=time_limit,
            time_limit_name=("walltime limit" if limit_source == "walltime" else "time limit"),
            owner_of=(
                (lambda u: owners[u.records[0].source])
                if spec.workers.schedule == "static"
                else None
            ),
            batch=(
                max_inflight(spec, n_endpoints)
                if dispatching(spec)
                else spec.engine.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS
            ),
            joins=cluster.joins if cluster else None,
            on_join=on_join,
        )
        with view:
            result = coordinator.run(options.stop)
        if cluster is not None:
            cluster.joins.close()
            handles = coordinator.workers
            never_joined = cluster.joins.missing_ranks()
    except BaseException:
        reap_workers(spawned, grace_s=0)
        raise

    counts = export_all(store, [s.id for s in summaries], spec.output, out_dir)
    reap_workers(spawned, grace_s=REAP_GRACE_S)
    for handle in handles:
        handle.conn.close()
    store.remove_cut_commits()
    complete = counts["records"] == plan.total_records
    wall = time.monotonic() - started
    failures = [h for h in handles if not h.clean_exit]
    status, code, message = _outcome(complete, counts, result, failures, store)
    if never_joined:
        message = "; ".join(
            m for m in (message, f"rank(s) {never_joined} never joined (see {store.logs_dir})") if m
        )
    workers_info = [
        WorkerSummary(
            worker=h.index,
            rank=h.rank,
            host=h.host,
            devices=h.devices,
            startup_s=h.startup_s,
            units=h.committed_units,
            **h.stats,
            error=h.error,
            log=str(h.log),
        )
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
        endpoints={
            k.removeprefix("endpoint "): v for k, v in counts.items() if k.startswith("endpoint ")
        },
    )
    write_run_json(out_dir, spec, summary, profile, placement, model_path)
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
    tail = log_tail(silent[0].log, lines=15) if silent else ""
    raise EngineError(
        f"the run failed: {details or 'workers stopped before the work was done'}; committed "
        f"units in {store.root} are kept, rerun to resume"
        + (f"\nlast log lines:\n{tail}" if tail else "")
    )


def _engine_setup(
    spec: JobSpec,
    profile: HardwareProfile,
    model_path: str,
    model_name: str,
    n_workers: int,
    *,
    cwd: Path | None = None,
    targets: list[Target] | None = None,
) -> EngineSetup:
    client = client_setup(spec, cwd or Path.cwd(), targets) if targets else None
    return EngineSetup(
        model_path=model_path,
        model_name=model_name,
        engine=spec.engine,
        sampling=spec.sampling,
        on_cpu=profile.vendor == "cpu",
        workers_on_node=n_workers,
        client=client,
    )


def engine_vars_for(
    spec: JobSpec, profile: HardwareProfile, workers_on_node: int
) -> dict[str, str]:
    setup = _engine_setup(spec, profile, "", "", workers_on_node)
    return {ENGINE_KIND_ENV: spec.engine.kind} | kind_of(spec).worker_env(setup)


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
