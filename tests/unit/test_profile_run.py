"""`hpcinfer profile run` without an engine: traces named by the rank their distributedInfo
holds (never the file name), a missing rank named with the other files kept, nsys missing,
bad configs and plans vLLM cannot run refused before anything starts, and the figures from
the tokens actually processed. The real engine runs in tests/integration/test_profile_run.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.engines.batch_steps import FinishedRequest
from hpcinfer.profile import runner
from hpcinfer.profile.engine_child import Iteration
from hpcinfer.profile.result import read_profile_result
from hpcinfer.profile.trace_collect import collect_traces, trace_rank
from hpcinfer.profile.worker_extension import step_times_ms, timing_stats
from tests.harness import InProcessCLI


def trace_document(rank: int | None, pg_ranks: int = 0) -> dict[str, Any]:
    """A Kineto trace as torch writes it: distributedInfo before traceEvents."""
    document: dict[str, Any] = {"schemaVersion": 1, "deviceProperties": []}
    if rank is not None:
        document["distributedInfo"] = {
            "backend": "nccl",
            "world_size": 2,
            # a long process-group list before the rank: more than one read chunk
            "pg_config": [{"pg_name": str(i), "ranks": [0, 1]} for i in range(pg_ranks)],
            "rank": rank,
            "nccl_version": "2.21.5",
        }
    document["traceEvents"] = [
        {"ph": "X", "cat": "cpu_op", "name": "_C::shm_allreduce", "ts": 1.0, "dur": 2.0}
    ]
    return document


def write_trace(path: Path, document: dict[str, Any], gzipped: bool = True) -> Path:
    text = json.dumps(document).encode()
    path.write_bytes(gzip.compress(text) if gzipped else text)
    return path


def test_traces_are_named_by_the_rank_inside_them_and_a_frontend_trace_is_set_aside(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    # the file names lie: rank0's file records rank 1 and the other way round
    write_trace(raw / "rank0.111.pt.trace.json.gz", trace_document(1, pg_ranks=5000))
    write_trace(raw / "rank1.222.pt.trace.json.gz", trace_document(0))
    write_trace(raw / "frontend.333.pt.trace.json.gz", trace_document(None))
    collected = collect_traces(raw, tmp_path)
    assert sorted(collected.by_rank) == [0, 1]
    for rank in (0, 1):
        kept = tmp_path / f"kineto_trace_{rank}.json.gz"
        assert json.loads(gzip.decompress(kept.read_bytes()))["distributedInfo"]["rank"] == rank
    assert [p.name for p in collected.set_aside] == ["frontend.333.pt.trace.json.gz"]
    assert (raw / "frontend.333.pt.trace.json.gz").exists()
    assert "no distributedInfo" in collected.notes[0]


def test_rank_is_read_from_an_uncompressed_or_truncated_trace(tmp_path: Path) -> None:
    plain = write_trace(tmp_path / "a.pt.trace.json", trace_document(3), gzipped=False)
    assert trace_rank(plain) == 3
    whole = gzip.compress(json.dumps(trace_document(2)).encode())
    cut = tmp_path / "b.pt.trace.json.gz"
    cut.write_bytes(whole[: len(whole) - 40])  # the end of the events is lost
    assert trace_rank(cut) == 2
    assert trace_rank(write_trace(tmp_path / "c.json.gz", trace_document(None))) is None


def experiment(tmp_path: Path, **parallelism: int) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(
        json.dumps({"num_attention_heads": 4, "num_hidden_layers": 2}), encoding="utf-8"
    )
    config = {
        "experiment_id": "tp2",
        "model": {"name": str(model), "precision": "bfloat16"},
        "parallelism": {"tp": 2, **parallelism},
        "data": {"batch_size": 2, "seq_len": 8, "max_tokens": 5},
        "warmup_iterations": 1,
        "timed_iterations": 2,
        "profile_iterations": 1,
        "output_dir": "runs/tp2",
    }
    path = tmp_path / "tp2.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    (tmp_path / "two-cores.yaml").write_text("name: two-cores\nvendor: cpu\ncores_per_node: 2\n")
    return path


def iteration(wall_s: float, output_tokens: tuple[int, ...]) -> dict[str, Any]:
    requests = [FinishedRequest(0.01, wall_s, 8, out) for out in output_tokens]
    return Iteration(wall_s, requests).as_dict()


class FakeEngine:
    """Stands in for the engine child: records what would reach vLLM, writes the traces
    of `ranks` where vLLM's profiler would, and reports iterations."""

    def __init__(self, ranks: tuple[int, ...], corrupt: tuple[int, ...] = ()) -> None:
        self.ranks = ranks
        self.corrupt = corrupt
        self.launch: Any = None

    def __call__(self, launch: Any, events: Path, log: Path, progress: Any) -> dict[str, Any]:
        self.launch = launch
        raw = Path(launch.llm_kwargs["profiler_config"]["torch_profiler_dir"])
        raw.mkdir(parents=True, exist_ok=True)
        for rank in self.ranks:
            write_trace(raw / f"rank{rank}.9.pt.trace.json.gz", trace_document(rank))
        for rank in self.corrupt:  # a gzip header, then bytes that are no deflate stream
            (raw / f"rank{rank}.9.pt.trace.json.gz").write_bytes(
                gzip.compress(b"{}")[:10] + b"\xff" * 64
            )
        return {
            "ready": {"event": "ready", "vllm_version": "0.32.0"},
            "done": {
                "startup": {"imports_s": 1.0, "first_token_s": 0.5, "total_s": 9.0},
                "timed": [iteration(0.1, (5, 5)), iteration(0.1, (5, 3))],
                "profiled": [iteration(0.15, (5, 5))],
                "rank_files": [],
                "execution_trace": {"files": [], "note": "this torch has no observer"},
            },
        }


def test_a_missing_rank_is_named_and_what_was_written_is_kept(
    tmp_path: Path, main_cli: InProcessCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment(tmp_path)
    fake = FakeEngine(ranks=(0,))
    monkeypatch.setattr(runner, "_drive", fake)
    monkeypatch.chdir(tmp_path)
    ran = main_cli("profile", "run", str(config), "--profile", "two-cores.yaml", "--no-analyze")
    assert ran.code == 1
    assert "rank(s) 1 have no trace (kineto_trace_1.json.gz missing)" in ran.err
    assert "a plan of 2 ranks" in ran.err and "profile.json are kept" in ran.err
    run_dir = tmp_path / "runs" / "tp2"
    assert (run_dir / "kineto_trace_0.json.gz").is_file()
    result = read_profile_result(run_dir)
    assert result.expected_ranks == 2 and result.missing_ranks == [1]
    assert [r.rank for r in result.ranks] == [0]
    assert (run_dir / "config.yaml").is_file()
    # what reached vLLM: the plan, the dtype, the profiler in every worker, our extension
    kwargs = fake.launch.llm_kwargs
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["pipeline_parallel_size"] == 1
    assert kwargs["dtype"] == "bfloat16" and "data_parallel_size" not in kwargs
    assert kwargs["profiler_config"]["profiler"] == "torch"
    assert kwargs["worker_extension_cls"].endswith("ProfileWorkerExtension")
    assert fake.launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_a_corrupt_trace_is_kept_aside_and_its_rank_named_missing_in_profile_json(
    tmp_path: Path, main_cli: InProcessCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment(tmp_path)
    monkeypatch.setattr(runner, "_drive", FakeEngine(ranks=(0,), corrupt=(1,)))
    monkeypatch.chdir(tmp_path)
    ran = main_cli("profile", "run", str(config), "--profile", "two-cores.yaml", "--no-analyze")
    assert ran.code == 1
    assert "rank(s) 1 have no trace" in ran.err
    assert "unreadable (corrupt) trace(s) kept aside: unreadable_traces/rank1.9" in ran.err
    run_dir = tmp_path / "runs" / "tp2"
    assert (run_dir / "unreadable_traces" / "rank1.9.pt.trace.json.gz").is_file()
    result = read_profile_result(run_dir)
    assert result.missing_ranks == [1] and [r.rank for r in result.ranks] == [0]
    assert any("rank1.9.pt.trace.json.gz cannot be read" in note for note in result.notes)
    # a rerun that profiles every rank no longer names the old unreadable trace
    monkeypatch.setattr(runner, "_drive", FakeEngine(ranks=(0, 1)))
    ran = main_cli("profile", "run", str(config), "--profile", "two-cores.yaml", "--no-analyze")
    assert ran.code == 0, ran.output
    assert not (run_dir / "unreadable_traces").exists()


def test_figures_come_from_the_tokens_processed_and_the_unprofiled_iterations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment(tmp_path)
    monkeypatch.setattr(runner, "_drive", FakeEngine(ranks=(0, 1)))
    options = runner.ProfileRunOptions(hardware_profile=str(tmp_path / "two-cores.yaml"))
    outcome = runner.run_profile(config, options)
    timing = outcome.result.timing
    # one request stopped at 3 tokens: 18 output tokens processed, not 2 x 2 x 5 = 20
    assert timing.output_tokens == 18 and timing.input_tokens == 32
    assert timing.output_tokens_per_s == pytest.approx(18 / 0.2)
    assert timing.total_tokens_per_s == pytest.approx((18 + 32) / 0.2)
    assert timing.step_ms == pytest.approx(100.0)
    assert timing.ttft_ms == pytest.approx(10.0)
    # TPOT: (e2e - ttft) / (tokens - 1) per request, averaged
    per_request = [0.09 / 4, 0.09 / 4, 0.09 / 4, 0.09 / 2]
    assert timing.tpot_ms == pytest.approx(1000 * sum(per_request) / 4)
    assert outcome.result.profiler.overhead_pct == pytest.approx(50.0)
    assert outcome.result.startup.first_token_s == 0.5
    assert outcome.result.versions.communication_library == "NCCL 2.21.5"
    assert "no torch_et_<rank>.json: this torch has no observer" in outcome.result.notes
    # no platform in the engine's ready event (an older child): the trace's library stays
    assert outcome.result.versions.driver is None


def test_driver_and_library_come_from_the_engine_and_the_topology_from_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment(tmp_path)
    fake = FakeEngine(ranks=(0, 1))
    platform = {
        "driver": "NVIDIA driver 550.54.15, CUDA 12.4",
        "communication_library": "NCCL 2.23.4",
    }

    def engine(*args: Any) -> dict[str, Any]:
        seen = fake(*args)
        seen["ready"]["platform"] = platform
        return seen

    monkeypatch.setattr(runner, "_drive", engine)
    (tmp_path / "linked.yaml").write_text(
        "name: linked\nvendor: cpu\ncores_per_node: 2\n"
        "network_topology: one socket, shared memory\n"
    )
    options = runner.ProfileRunOptions(hardware_profile=str(tmp_path / "linked.yaml"))
    result = runner.run_profile(config, options).result
    assert result.versions.driver == "NVIDIA driver 550.54.15, CUDA 12.4"
    assert result.versions.communication_library == "NCCL 2.23.4"  # the engine's, not the trace's
    assert result.hardware.network_topology == "one socket, shared memory"
    on_disk = read_profile_result(tmp_path / "runs" / "tp2")
    assert on_disk.versions.driver == result.versions.driver


def test_nsys_missing_is_a_usage_error_with_the_fix(
    tmp_path: Path, main_cli: InProcessCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    ran = main_cli("profile", "run", str(config), "--nsys")
    assert ran.code == 2
    assert "`nsys`) is not on PATH" in ran.err and "module load" in ran.err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"parallelism": {"tp": 2, "dp_replicate": 2}}, "dp_replicate=2: `profile run` drives one"),
        ({"parallelism": {"tp": 2, "ep": 4}}, "ep=4: vLLM splits the experts"),
        ({"parallelism": {"tp": 3}}, "tp=3: the model's 4 attention heads"),
        ({"data": {"batch_sise": 2}}, "batch_sise"),
    ],
)
def test_bad_configs_are_refused_before_anything_starts(
    tmp_path: Path,
    main_cli: InProcessCLI,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    expected: str,
) -> None:
    config = experiment(tmp_path)
    document = json.loads(config.read_text())
    document.update(change)
    config.write_text(json.dumps(document))
    started: list[Any] = []
    monkeypatch.setattr(runner, "_drive", lambda *args: started.append(args))
    ran = main_cli("profile", "run", str(config), "--profile", str(tmp_path / "two-cores.yaml"))
    assert ran.code == 2, ran.output
    assert str(config) in ran.err and expected in ran.err
    assert started == [] and not (tmp_path / "runs").exists()


class _Range:
    def __init__(self, start: float, us: float) -> None:
        self.start = start
        self._us = us

    def elapsed_us(self) -> float:
        return self._us


class _Event:
    """What the worker reads of one profiler event: its name and time range."""

    def __init__(self, name: str, start: float, us: float) -> None:
        self.name = name
        self.time_range = _Range(start, us)


def test_timing_stats_keep_every_step_and_average_the_ones_the_analysis_keeps() -> None:
    events = [
        _Event(f"execute_context_1(8)_generation_0(0)_{i}", start, us)
        for i, (start, us) in enumerate([(30.0, 3000.0), (0.0, 9000.0), (10.0, 2000.0)])
    ]
    events.append(_Event("execute_context_0(0)_generation_2(2)", 50.0, 500.0))
    events.append(_Event("aten::mm", 1.0, 100.0))
    steps = step_times_ms(events)
    assert steps == [9.0, 2.0, 3.0, 0.5]  # in order of start
    stats = timing_stats(3, steps)
    assert stats["rank"] == 3 and stats["steps"] == 4 and stats["step_ms"] == steps
    assert stats["dropped_steps"] == [0, 3]  # the first and last: partial, as in analysis
    assert stats["mean_step_ms"] == 2.5 and stats["mean_step_ms_all"] == 3.625
    # ProfilerStep# windows, when present, are the steps (each holds a vLLM step)
    events.append(_Event("ProfilerStep#1", 0.0, 10000.0))
    assert step_times_ms(events) == [10.0]
    two = timing_stats(0, [1.0, 3.0])
    assert two["dropped_steps"] == [] and two["mean_step_ms"] == 2.0
