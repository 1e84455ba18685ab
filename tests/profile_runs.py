"""Run folders as `hpcinfer profile run` leaves them, built for the tests of card, summary and
report: profile.json through the ProfileResult model, one gzipped trace per rank, and an
analysis.json with the keys `profile analyze` writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hpcinfer.core.startup_phases import StartupPhases
from hpcinfer.profile.experiment import ExperimentConfig
from hpcinfer.profile.result import (
    PROFILE_FILE,
    Hardware,
    ProfileResult,
    ProfilerOverhead,
    RankFiles,
    Timing,
    Versions,
)


def profile_result(
    experiment_id: str = "E1.2_llama8b_tp2",
    model: str = "meta-llama/Llama-3.1-8B",
    tokens_per_s: float = 1000.0,
    **parallelism: int,
) -> ProfileResult:
    experiment = ExperimentConfig.model_validate(
        {
            "experiment_id": experiment_id,
            "description": f"{experiment_id} test run",
            "model": {"name": model, "precision": "bfloat16"},
            "parallelism": parallelism,
            "data": {"batch_size": 4, "seq_len": 128, "max_tokens": 32},
            "output_dir": experiment_id,
        }
    )
    world = experiment.parallelism.world_size
    return ProfileResult(
        experiment=experiment,
        versions=Versions(
            hpcinfer="0.test",
            python="3.11.7",
            torch="2.13.0",
            vllm="0.32.0",
            driver="cuda_12.4",
            communication_library="NCCL 2.21.5",
        ),
        hardware=Hardware(
            device_type="cuda",
            device_model="NVIDIA A100-SXM4-40GB",
            count_per_node=4,
            nodes=max(1, -(-world // 4)),
            network_topology="slingshot",
        ),
        timing=Timing(
            iterations=5,
            input_tokens=512,
            output_tokens=128,
            ttft_ms=40.0,
            tpot_ms=8.0,
            step_ms=640.0 * 1000.0 / tokens_per_s,
            output_tokens_per_s=tokens_per_s / 5,
            total_tokens_per_s=tokens_per_s,
        ),
        profiler=ProfilerOverhead(step_ms_unprofiled=640.0, step_ms_profiled=700.0),
        startup=StartupPhases(total_s=21.5),
        ranks=[
            RankFiles(
                rank=r,
                kineto_trace=f"kineto_trace_{r}.json.gz",
                timing_stats=f"timing_stats_{r}.json",
            )
            for r in range(world)
        ],
        expected_ranks=world,
    )


def analysis(
    world: int,
    comm_pct: float = 20.0,
    exposed_pct: float = 10.0,
    straggler: int | None = None,
    allreduce_per_step: int = 64,
) -> dict[str, Any]:
    """analysis.json as `profile analyze` writes it (the keys the contract names)."""
    ranks = [
        {
            "rank": r,
            "world_size": world,
            "steps": 8,
            "step_kinds": {"prefill": 1, "decode": 7, "mixed": 0},
            "step_ms": 25.0,
            "collectives": {"all_reduce": allreduce_per_step * 8, "all_gather": 8},
            "collectives_per_step": {"all_reduce": allreduce_per_step, "all_gather": 1},
            "comm_ms": 25.0 * comm_pct / 100,
            "compute_ms": 18.0,
            "memcpy_ms": 0.5,
            "comm_overhead_pct": comm_pct + r,
            "exposed_comm_pct": exposed_pct + r,
            "overlap_pct": 50.0,
            "idle_ms": 1.0,
            "top_ops": [],
        }
        for r in range(world)
    ]
    return {
        "trace_dir": ".",
        "ranks": ranks,
        "straggler": straggler,
        "straggler_wait_ms": 3.5 if straggler is not None else 0.0,
        "straggler_last_share": 0.9 if straggler is not None else 0.0,
        "collective_table_version": 1,
        "unknown_comm_share": 0.0,
        "data_quality": {},
    }


def write_run(
    root: Path,
    result: ProfileResult,
    analysis_doc: dict[str, Any] | None = None,
    skip_ranks: tuple[int, ...] = (),
) -> Path:
    """The run folder `root/<experiment_id>` with its files."""
    run_dir = root / result.experiment.experiment_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PROFILE_FILE).write_text(result.model_dump_json(indent=1))
    for rank in range(result.experiment.parallelism.world_size):
        if rank in skip_ranks:
            continue
        trace = {"distributedInfo": {"rank": rank}, "traceEvents": []}
        with gzip.open(run_dir / f"kineto_trace_{rank}.json.gz", "wt") as handle:
            json.dump(trace, handle)
    if analysis_doc is not None:
        (run_dir / "analysis.json").write_text(json.dumps(analysis_doc))
    return run_dir
