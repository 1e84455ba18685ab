"""`hpcinfer profile run` at TP=2 on the real CPU vLLM with the built-in tiny model: both
ranks' traces, named by the rank inside them, hold the engine's steps and the same non-zero
number of each collective (read here and in the analysis the run ends with); profile.json's
figures match the tokens asked for; every rank's files are there; no process is left. One
small TP=2 engine (a few tokens, a small KV cache)."""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.profile.result import read_profile_result
from tests.conftest import require, run_cli
from tests.processes import command_lines, processes_in

pytestmark = pytest.mark.integration

COLLECTIVES = ("_C::shm_allreduce", "_C::shm_all_gather")  # vLLM's CPU TP collectives
CONFIG = {
    "experiment_id": "tiny-tp2",
    "description": "the built-in tiny model at TP=2",
    "model": {"name": "tiny"},
    "parallelism": {"tp": 2},
    "data": {"batch_size": 2, "seq_len": 16, "max_tokens": 4},
    "warmup_iterations": 1,
    "timed_iterations": 2,
    "profile_iterations": 2,
    "output_dir": "tiny-tp2",
}


def read_trace(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return document


def test_tp2_profiles_both_ranks_with_equal_collectives_and_leaves_nothing_running(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    require("two CPU cores", len(os.sched_getaffinity(0)) >= 2, "run TP=2 on 2+ cores")
    (tmp_path / "tiny-tp2.yaml").write_text(json.dumps(CONFIG), encoding="utf-8")
    proc = run_cli(
        ["profile", "run", "tiny-tp2.yaml", "--kv-cache-bytes", str(256 << 20)],
        cwd=tmp_path,
        env=cli_env,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert processes_in(tmp_path) == [], command_lines(processes_in(tmp_path))
    run_dir = tmp_path / "tiny-tp2"
    assert "profiled 2/2" in proc.stderr and "2/2 ranks traced" in proc.stdout

    counts = []
    for rank in (0, 1):
        trace = read_trace(run_dir / f"kineto_trace_{rank}.json.gz")
        assert trace["distributedInfo"]["rank"] == rank
        assert trace["distributedInfo"]["world_size"] == 2
        names = Counter(e.get("name", "") for e in trace["traceEvents"])
        steps = [n for n in names if n.startswith("execute_context")]
        assert steps, f"rank {rank}: no engine step in the trace"
        counts.append({name: names[name] for name in COLLECTIVES})
        # the worker's own files for this rank
        stats = json.loads((run_dir / f"timing_stats_{rank}.json").read_text())
        assert stats["rank"] == rank and stats["steps"] == sum(names[s] for s in steps)
        with (run_dir / f"operators_{rank}.csv").open(encoding="utf-8") as handle:
            operators = {row["name"]: row for row in csv.DictReader(handle)}
        assert int(operators["_C::shm_allreduce"]["calls"]) == names["_C::shm_allreduce"]
        assert (run_dir / f"torch_et_{rank}.json").stat().st_size > 0
    assert counts[0] == counts[1], counts
    assert all(count > 0 for count in counts[0].values()), counts

    # the analysis profile run ends with: steps found, the same collectives on both ranks
    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    ranks = {entry["rank"]: entry for entry in analysis["ranks"]}
    assert sorted(ranks) == [0, 1]
    assert ranks[0]["steps"] > 0 and ranks[0]["steps"] == ranks[1]["steps"]
    assert ranks[0]["collectives"] == ranks[1]["collectives"]
    assert ranks[0]["collectives"] and all(n > 0 for n in ranks[0]["collectives"].values())

    result = read_profile_result(run_dir)
    assert result.expected_ranks == 2 and result.missing_ranks == []
    assert [r.rank for r in result.ranks] == [0, 1]
    timing = result.timing
    assert timing.iterations == 2
    assert timing.input_tokens == 2 * 2 * 16 and timing.output_tokens == 2 * 2 * 4
    assert timing.ttft_ms is not None and timing.tpot_ms is not None
    assert timing.total_tokens_per_s > 0
    assert result.profiler.step_ms_profiled > 0 and result.profiler.step_ms_unprofiled > 0
    assert result.startup.imports_s and result.startup.first_token_s
    assert result.versions.vllm and result.hardware.device_type == "cpu"
    assert (run_dir / "config.yaml").is_file()
