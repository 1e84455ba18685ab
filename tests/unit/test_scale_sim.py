"""bench/scale_sim.py on a small machine: the simulation drives the real Scheduler, loses and
repeats nothing, and respects the ideal bound."""

from __future__ import annotations

from typing import Any

import pytest
from bench.scale_sim import (
    SimConfig,
    Variant,
    WorkloadModel,
    ideal_bound,
    make_workload,
    simulate,
    variants,
)

CONFIG = SimConfig(nodes=4, workers_per_node=3)
POLICIES = [Variant("dynamic"), Variant("static", policy="static")]


def run(policy: Variant, **workload: Any) -> tuple[dict[str, Any], dict[str, float], int]:
    model = WorkloadModel(**({"records": 3000, "max_tokens": 512} | workload))
    jobs = make_workload(model, CONFIG.workers, CONFIG.unit_size)
    figures = simulate(CONFIG, jobs, policy, check=True)
    return figures, ideal_bound(jobs, CONFIG.engine, CONFIG.workers), jobs.units


@pytest.mark.parametrize("policy", [*POLICIES, *variants(CONFIG)[1:]], ids=lambda v: v.name)
def test_every_record_runs_once_and_no_run_beats_the_ideal(policy: Variant) -> None:
    figures, ideal, units = run(policy)
    assert figures["records_simulated_once"] == 3000
    assert figures["units_committed_once"] == units == figures["units_granted"]
    assert figures["makespan_s"] >= ideal["ideal_s"] >= ideal["longest_s"]
    assert 0 < figures["coordinator_utilisation"] < 1


def test_dynamic_beats_the_static_split_on_a_skewed_workload() -> None:
    """The first half of the files holds answers 4x longer: static leaves those workers
    the extra work, dynamic spreads it (2,500 records a worker: ten batches each)."""
    dynamic, ideal, _ = run(POLICIES[0], records=30_000, skew=4.0)
    static, _, _ = run(POLICIES[1], records=30_000, skew=4.0)
    assert dynamic["makespan_s"] < 0.95 * static["makespan_s"]
    assert static["makespan_s"] > 1.2 * ideal["ideal_s"]


def test_same_seed_same_figures() -> None:
    first, _, _ = run(POLICIES[0], seed=7)
    again, _, _ = run(POLICIES[0], seed=7)
    assert first["makespan_s"] == again["makespan_s"]
    assert first["requests"] == again["requests"]
