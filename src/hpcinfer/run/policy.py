"""How run spreads a job over workers, and which engine each worker gets.

Decided from the spec and the hardware profile alone, before anything starts, so the
coordinator rank and every other rank (run.agent) reach the same answers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hpcinfer.cluster import HardwareProfile, PlacementPlan, plan_placement
from hpcinfer.cluster.devices import DeviceGroup
from hpcinfer.cluster.placement import Placement
from hpcinfer.engines.kinds import ENGINE_KIND_ENV, kind_of
from hpcinfer.engines.openai_engine import Target
from hpcinfer.engines.targets import client_setup
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.run.ranks import RankContext
from hpcinfer.spec import JobSpec

ENGINE_DEFAULT_MAX_NUM_SEQS = 256


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


def job_placement(spec: JobSpec, profile: HardwareProfile, units_left: int | None) -> PlacementPlan:
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
        return job_placement(spec, profile, None)
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    node = plan_placement(profile, workers=ctx.info.local_size, tp=tp, mode=mode)
    return dataclasses.replace(node, placements=[node.placements[ctx.info.local_rank]])


def engine_setup(
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
    setup = engine_setup(spec, profile, "", "", workers_on_node)
    return {ENGINE_KIND_ENV: spec.engine.kind} | kind_of(spec).worker_env(setup)
