"""Known answers from small synthetic Kineto traces: what `analyze_traces` must find."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcinfer.errors import InputError
from hpcinfer.traces import TraceAnalysis, analyze_traces
from hpcinfer.traces.collective_names import TABLE_VERSION, classify, looks_like_comm
from hpcinfer.traces.intervals import IntervalSet
from tests.unit.trace_fakes import TraceBuilder

ALL_REDUCE = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1"


def _gpu_rank(rank: int, delay: float = 0.0) -> TraceBuilder:
    """Three 1000 us steps; the middle one (the one analysed) holds, from its start:
    compute [0, 250), all-reduce [100, 300) on stream 20 and [200, 400) on stream 21,
    a copy [500, 600). The first and last steps are busy, so keeping them would show."""
    trace = TraceBuilder(rank=rank, world_size=2).steps(3, 1000)
    trace.kernel(ALL_REDUCE, 0, 1000, stream=20).kernel(ALL_REDUCE, 2000, 1000, stream=20)
    trace.kernel(GEMM, 1000, 250)
    trace.kernel(ALL_REDUCE, 1100 + delay, 200 - delay, stream=20)
    trace.kernel(ALL_REDUCE, 1200 + delay, 200 - delay, stream=21)
    trace.memcpy(1500, 100)
    return trace


def _analyse(folder: Path) -> TraceAnalysis:
    return analyze_traces(folder, folder / "out", workers=1)


def test_overlapping_comm_kernels_count_once_and_exposed_comm_is_what_compute_leaves(
    tmp_path: Path,
) -> None:
    _gpu_rank(0).write(tmp_path / "kineto_trace_0.json")
    rank = _analyse(tmp_path).ranks[0]
    assert rank.steps == 1  # first and last dropped
    assert rank.step_ms == pytest.approx(1.0)
    # union of [100,300) and [200,400) is 300 us, though the kernels sum to 400
    assert rank.comm_ms == pytest.approx(0.3)
    assert rank.comm_overhead_pct == pytest.approx(30.0)
    # compute [0,250) hides [100,250) of it: 150 us exposed, half the comm overlapped
    assert rank.compute_ms == pytest.approx(0.25)
    assert rank.exposed_comm_pct == pytest.approx(15.0)
    assert rank.overlap_pct == pytest.approx(50.0)
    assert rank.memcpy_ms == pytest.approx(0.1)
    assert rank.idle_ms == pytest.approx(0.5)  # 1000 - |[0,400) + [500,600)|
    assert rank.collectives == {"all_reduce": 2}
    assert rank.collectives_per_step == {"all_reduce": 2.0}
    assert rank.timeline == "device"


def _calls_rank(
    rank: int,
    world: int,
    lates: list[float],
    *,
    group: str | None = None,
    offset: float = 0.0,
    kernel: str = ALL_REDUCE,
) -> TraceBuilder:
    """Three 10 ms steps; in the middle one (the one analysed) call k starts at
    10050 + 200 k + offset + lates[k] and ends 100 us after the on-time start."""
    trace = TraceBuilder(rank=rank, world_size=world).steps(3, 10_000)
    for k, late in enumerate(lates):
        start = 10_050 + 200 * k + offset
        trace.kernel(kernel, start + late, 100 - late)
        if group is not None:
            trace.events[-1]["args"]["Process Group Name"] = group
    return trace


def test_a_rank_whose_collectives_start_late_is_named_the_straggler(tmp_path: Path) -> None:
    for rank in range(4):
        lates = [80.0 if rank == 2 else 0.0] * 24
        _calls_rank(rank, 4, lates).write(tmp_path / f"kineto_trace_{rank}.json")
    analysis = _analyse(tmp_path)
    assert analysis.straggler == 2
    assert analysis.matched_collectives == 24
    assert analysis.straggler_last_share == 1.0
    assert analysis.straggler_p_value == pytest.approx(0.25**24, rel=1e-2)
    # each of the 3 others waited 80 us at each of the 24 calls
    assert analysis.straggler_wait_ms == pytest.approx(3 * 24 * 0.080)
    by_rank = {r.rank: r for r in analysis.ranks}
    assert by_rank[2].last_arrivals == 24
    assert by_rank[2].wait_ms == 0
    assert by_rank[0].wait_ms == pytest.approx(24 * 0.080)
    # the late rank spends *less* time in the collective than those who waited for it
    assert by_rank[2].comm_ms < by_rank[0].comm_ms
    rows = list(csv.DictReader((tmp_path / "out" / "analysis_collectives.csv").open()))
    assert len(rows) == 24 * 4
    assert {r["rank"] for r in rows if r["last"] == "True"} == {"2"}


@pytest.mark.parametrize(
    ("calls", "late_at", "late_us"),
    [
        (3, range(3), 80.0),  # always last, but 3 calls prove nothing
        (24, range(14), 80.0),  # last at 14 of 24: what chance gives two ranks (p ~ 0.27)
        (24, range(24), 1.0),  # always last, by 1 us: nobody waited to speak of
    ],
)
def test_a_straggler_needs_many_calls_a_share_above_chance_and_a_real_wait(
    tmp_path: Path, calls: int, late_at: range, late_us: float
) -> None:
    for rank in range(2):
        lates = [late_us if rank == 1 and k in late_at else 0.0 for k in range(calls)]
        if rank == 0:  # rank 0 is last at the other calls
            lates = [0.0 if k in late_at else late_us for k in range(calls)]
        _calls_rank(rank, 2, lates).write(tmp_path / f"kineto_trace_{rank}.json")
    analysis = _analyse(tmp_path)
    assert analysis.matched_collectives == calls
    assert analysis.straggler is None
    assert analysis.straggler_wait_ms == 0
    by_rank = {r.rank: r for r in analysis.ranks}
    assert by_rank[1].last_arrivals == len(late_at)
    if calls == 24 and late_us == 80.0:
        assert analysis.straggler_p_value == pytest.approx(0.2706, abs=1e-3)


def test_with_pipeline_stages_calls_are_matched_within_their_process_group(
    tmp_path: Path,
) -> None:
    """TP 2 x PP 2: ranks 0-1 all-reduce in group "1", ranks 2-3 in group "2", 500 us later
    (the second stage). Rank 3 is 40 us late in its group; rank 2 is never last."""
    for rank in range(4):
        group, offset = ("1", 0.0) if rank < 2 else ("2", 500.0)
        lates = [40.0 if rank == 3 else 0.0] * 24
        _calls_rank(rank, 4, lates, group=group, offset=offset).write(
            tmp_path / f"kineto_trace_{rank}.json"
        )
    analysis = _analyse(tmp_path)
    assert analysis.straggler == 3
    assert analysis.matched_collectives == 48  # 24 in each group
    assert analysis.straggler_wait_ms == pytest.approx(24 * 0.040)  # rank 2 waited
    by_rank = {r.rank: r for r in analysis.ranks}
    assert [by_rank[r].last_arrivals for r in range(4)] == [0, 0, 0, 24]
    assert by_rank[2].wait_ms == pytest.approx(24 * 0.040)
    assert by_rank[0].wait_ms == 0  # not compared with the other stage
    rows = list(csv.DictReader((tmp_path / "out" / "analysis_collectives.csv").open()))
    pairs = {(r["group"], r["rank"]) for r in rows}
    assert pairs == {("1", "0"), ("1", "1"), ("2", "2"), ("2", "3")}


def test_ungrouped_calls_that_differ_between_ranks_name_no_straggler(tmp_path: Path) -> None:
    """No process group in the trace, and the stages ran different collectives: rank 1
    arrives last every time, but what it would be compared with is unknown."""
    _calls_rank(0, 2, [0.0] * 24).write(tmp_path / "kineto_trace_0.json")
    _calls_rank(1, 2, [80.0] * 30).write(tmp_path / "kineto_trace_1.json")
    analysis = _analyse(tmp_path)
    assert analysis.straggler is None
    assert analysis.matched_collectives == 0
    assert any("do not say which process group" in n for n in analysis.notes)


def test_ranks_that_arrive_together_have_no_straggler(tmp_path: Path) -> None:
    for rank in range(2):
        _gpu_rank(rank).write(tmp_path / f"kineto_trace_{rank}.json")
    analysis = _analyse(tmp_path)
    assert analysis.straggler is None
    assert analysis.straggler_wait_ms == 0


def test_gzip_and_plain_json_give_the_same_figures(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    _gpu_rank(0).write(plain / "kineto_trace_0.json")
    _gpu_rank(0).write(packed / "kineto_trace_0.json.gz")
    a, b = _analyse(plain), _analyse(packed)
    assert a.ranks[0].model_dump(exclude={"file"}) == b.ranks[0].model_dump(exclude={"file"})
    assert b.data_quality["kineto_trace_0.json.gz"].truncated is False


def _many_steps(rank: int = 0) -> TraceBuilder:
    """Ten 1000 us steps in time order, each 500 us compute then 100 us all-reduce."""
    trace = TraceBuilder(rank=rank)
    for step in range(10):
        trace.annotation(f"ProfilerStep#{step}", step * 1000, 1000)
        trace.kernel(GEMM, step * 1000, 500).kernel(ALL_REDUCE, step * 1000 + 500, 100)
    return trace


@pytest.mark.parametrize("name", ["kineto_trace_0.json", "kineto_trace_0.json.gz"])
def test_a_truncated_file_is_analysed_up_to_the_cut_and_reported(tmp_path: Path, name: str) -> None:
    trace = TraceBuilder().steps(10, 1000)  # the step marks first, as Kineto writes them
    for step in range(10):
        trace.kernel(GEMM, step * 1000, 500).kernel(ALL_REDUCE, step * 1000 + 500, 100)
    data = gzip.compress(trace.text()) if name.endswith(".gz") else trace.text()
    (tmp_path / name).write_bytes(data[: int(len(data) * 0.9)])  # the last kernels cut off
    analysis = _analyse(tmp_path)
    quality = analysis.data_quality[name]
    assert quality.truncated
    assert 0 < quality.events_read < len(trace.events)
    assert any("analysed" in note for note in quality.notes)
    # the steps after the last event read are left out, not counted as idle
    assert 1 <= analysis.ranks[0].steps < 8
    assert analysis.ranks[0].comm_overhead_pct == pytest.approx(10.0)
    assert any("after the last event read" in note for note in quality.notes)


def test_an_integer_above_int64_is_read_and_counted(tmp_path: Path) -> None:
    trace = _many_steps()
    trace.events[3]["args"] = {"Python id": 2**70, "External id": -(2**65)}
    trace.write(tmp_path / "kineto_trace_0.json")
    analysis = _analyse(tmp_path)
    quality = analysis.data_quality["kineto_trace_0.json"]
    assert quality.huge_ints == 2
    assert quality.events_read == len(trace.events)
    assert not quality.truncated
    assert analysis.ranks[0].steps == 8
    assert analysis.ranks[0].comm_overhead_pct == pytest.approx(10.0)


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    trace = _many_steps()
    trace.kernel("gemm_PLACEHOLDER", 1000, 10)
    data = trace.text().replace(b"PLACEHOLDER", b"bad\xff\xfebytes")
    (tmp_path / "kineto_trace_0.json.gz").write_bytes(gzip.compress(data))
    analysis = _analyse(tmp_path)
    quality = analysis.data_quality["kineto_trace_0.json.gz"]
    assert quality.invalid_utf8 == 2
    assert quality.events_read == len(trace.events)
    assert any(op.name.startswith("gemm_bad") for op in analysis.ranks[0].top_ops)


def test_the_rank_comes_from_distributed_info_not_the_file_name(tmp_path: Path) -> None:
    _gpu_rank(1).write(tmp_path / "rank0.1733389200.pt.trace.json.gz")
    _gpu_rank(0).write(tmp_path / "rank1.1733389201.pt.trace.json.gz")
    no_info = _gpu_rank(0)
    no_info.rank = None
    no_info.write(tmp_path / "dp0_pp0_tp0_dcp0_ep0_rank3.1733389202.pt.trace.json.gz")
    analysis = _analyse(tmp_path)
    by_rank = {r.rank: r for r in analysis.ranks}
    assert by_rank[1].file.startswith("rank0.")
    assert by_rank[0].file.startswith("rank1.")
    assert by_rank[1].rank_source == "distributedInfo"
    assert by_rank[3].rank_source == "file name"
    assert any("file name" in n for n in analysis.data_quality[by_rank[3].file].notes)


def test_two_files_claiming_one_rank_keep_the_one_distributed_info_names(tmp_path: Path) -> None:
    _gpu_rank(0).write(tmp_path / "worker.json")
    frontend = TraceBuilder(rank=None).steps(3, 1000)
    frontend.write(tmp_path / "rank0.frontend.pt.trace.json")
    analysis = _analyse(tmp_path)
    assert [r.file for r in analysis.ranks] == ["worker.json"]
    assert any("both rank 0" in n for n in analysis.notes)


def _vllm_cpu_rank(rank: int) -> TraceBuilder:
    """vLLM on CPU at TP 2: five steps (prefill, decode, decode, mixed, decode), each
    1000 us with 5 `_C::shm_allreduce` (20 us) and 1 `_C::shm_all_gather` (30 us) inside
    compute operators; the all-reduce sits in vLLM's `vllm::all_reduce` wrapper."""
    names = [
        "execute_context_1(7)_generation_0(0)",
        "execute_context_0(0)_generation_1(1)",
        "execute_context_0(0)_generation_1(1)",
        "execute_context_1(5)_generation_1(1)",
        "execute_context_0(0)_generation_1(1)",
    ]
    trace = TraceBuilder(rank=rank, world_size=2)
    for step, name in enumerate(names):
        start = step * 1000.0
        trace.annotation(name, start, 1000)
        trace.cpu_op("aten::linear", start, 900)
        trace.cpu_op("aten::addmm", start + 10, 50)
        for k in range(5):
            at = start + 100 + 150 * k
            trace.cpu_op("vllm::all_reduce", at, 25)
            trace.cpu_op("_C::shm_allreduce", at + 2, 20)
        trace.cpu_op("_C::shm_all_gather", start + 860, 30)
    return trace


def test_vllm_cpu_steps_and_shm_collectives(tmp_path: Path) -> None:
    for rank in range(2):
        _vllm_cpu_rank(rank).write(tmp_path / f"rank{rank}.pt.trace.json.gz")
    analysis = _analyse(tmp_path)
    for rank in analysis.ranks:
        assert rank.timeline == "cpu"
        assert rank.steps == 3
        assert rank.step_kinds.model_dump() == {"prefill": 0, "decode": 2, "mixed": 1, "unknown": 0}
        assert rank.collectives == {"all_gather": 3, "all_reduce": 15}
        assert rank.collectives_per_step == {"all_gather": 1.0, "all_reduce": 5.0}
        # comm: 5 wrappers of 25 us + 30 us = 155 us a step; compute is the rest of
        # aten::linear's 900 us (minus the comm inside it), the gather outside it
        assert rank.comm_ms == pytest.approx(0.155)
        assert rank.compute_ms == pytest.approx(0.900 - 0.125 - 0.030)
        assert rank.exposed_comm_pct == pytest.approx(rank.comm_overhead_pct)
        assert rank.comm_overhead_pct == pytest.approx(15.5)
        assert rank.idle_ms == pytest.approx(1.0 - 0.900)
        assert rank.collective_libraries == {"vllm": 15, "vllm-shm": 3}
    assert analysis.unknown_comm_share == 0
    assert analysis.matched_collectives == 18


def test_comm_like_names_the_table_does_not_know_are_reported(tmp_path: Path) -> None:
    trace = _many_steps()
    trace.kernel("my_custom_allreduce_kernel", 2500, 10)
    trace.write(tmp_path / "kineto_trace_0.json")
    analysis = _analyse(tmp_path)
    assert analysis.collective_table_version == TABLE_VERSION
    assert analysis.unknown_comm_names == ["my_custom_allreduce_kernel"]
    assert analysis.unknown_comm_share == pytest.approx(1 / 11)


def test_analysis_json_and_csvs_hold_the_contract_keys(tmp_path: Path) -> None:
    for rank in range(2):
        _gpu_rank(rank).write(tmp_path / f"kineto_trace_{rank}.json.gz")
    (tmp_path / "profile.json").write_text("{}")  # a run folder's other files are not traces
    (tmp_path / "torch_et_0.json").write_text('{"nodes": []}')
    analyze_traces(tmp_path, tmp_path / "out")
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    for key in ("trace_dir", "ranks", "straggler", "straggler_wait_ms", "data_quality",
                "collective_table_version", "unknown_comm_share"):  # fmt: skip
        assert key in document
    assert sorted(document["data_quality"]) == ["kineto_trace_0.json.gz", "kineto_trace_1.json.gz"]
    rank_keys = (
        "rank world_size steps step_kinds step_ms collectives collectives_per_step comm_ms "
        "compute_ms memcpy_ms comm_overhead_pct exposed_comm_pct overlap_pct idle_ms top_ops"
    )
    for key in rank_keys.split():
        assert key in document["ranks"][0]
    steps = list(csv.DictReader((tmp_path / "out" / "analysis_steps.csv").open()))
    assert [(r["rank"], r["comm_overhead_pct"]) for r in steps] == [("0", "30.0"), ("1", "30.0")]
    ranks = list(csv.DictReader((tmp_path / "out" / "analysis_ranks.csv").open()))
    assert [r["rank"] for r in ranks] == ["0", "1"]


def test_a_folder_without_traces_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="no Kineto trace"):
        analyze_traces(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        analyze_traces(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclWorkElem)", "all_gather"),
        (ALL_REDUCE, "all_reduce"),
        (
            "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            "reduce_scatter",
        ),
        ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 2>(vllm::RankData*)", "all_reduce"),
        ("void vllm::cross_device_reduce_2stage<__nv_bfloat16, 4>(vllm::RankData*)", "all_reduce"),
        ("multimem_all_reduce_kernel<bf16, 4>", "all_reduce"),
        ("two_shot_all_reduce_kernel<bf16>", "all_reduce"),
        ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "send_recv"),
    ],
)
def test_the_table_knows_device_collectives(name: str, op: str) -> None:
    found = classify(name, "kernel")
    assert found is not None and found.op == op


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("_C::shm_allreduce", "all_reduce"),
        ("_C::shm_all_gather", "all_gather"),
        ("gloo:all_reduce", "all_reduce"),
        ("c10d::allreduce_", "all_reduce"),
        ("c10d::_allgather_base_", "all_gather"),
        ("c10d::_reduce_scatter_base_", "reduce_scatter"),
        ("xccl:all_reduce", "all_reduce"),
    ],
)
def test_the_table_knows_cpu_collectives(name: str, op: str) -> None:
    found = classify(name, "operator")
    assert found is not None and found.op == op
    assert classify("aten::mm", "operator") is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 15)), max_size=12),
    st.integers(0, 60),
    st.integers(0, 30),
)
def test_union_length_inside_a_window_matches_counting_time_units(
    spans: list[tuple[int, int]], window_start: int, window_length: int
) -> None:
    covered = {t for start, length in spans for t in range(start, start + length)}
    window = set(range(window_start, window_start + window_length))
    union = IntervalSet(
        np.array([float(s) for s, _ in spans]), np.array([float(s + n) for s, n in spans])
    )
    inside = union.within(
        np.array([float(window_start)]), np.array([float(window_start + window_length)])
    )
    assert union.total == len(covered)
    assert inside[0] == len(covered & window)


def test_a_gloo_collective_recorded_twice_is_counted_once(tmp_path: Path) -> None:
    """torch records a gloo all-reduce as `c10d::allreduce_` on the caller's thread and as
    `gloo:all_reduce` on gloo's own thread: one call, whose time is the gloo thread's."""
    trace = TraceBuilder(rank=0)
    for step in range(4):
        start = step * 1000.0
        trace.annotation(f"ProfilerStep#{step}", start, 1000)
        trace.cpu_op("aten::mm", start, 300)
        trace.cpu_op("c10d::allreduce_", start + 300, 10, tid=1)
        trace.annotation("gloo:all_reduce", start + 305, 200)
        trace.events[-1]["tid"] = 99
    trace.write(tmp_path / "trace.json")
    rank = _analyse(tmp_path).ranks[0]
    assert rank.collectives == {"all_reduce": 2}  # two analysed steps, one call each
    assert rank.collective_libraries == {"c10d": 2}
    assert rank.comm_ms == pytest.approx(0.205)  # [300, 505) on either thread
    assert rank.compute_ms == pytest.approx(0.300)


def test_a_trace_without_a_rank_beside_workers_is_left_out_and_missing_ranks_named(
    tmp_path: Path,
) -> None:
    """vLLM's frontend writes a trace with no distributedInfo; rank 2 of 4 wrote none."""
    for rank in (0, 1, 3):
        _calls_rank(rank, 4, [0.0] * 3).write(tmp_path / f"kineto_trace_{rank}.json")
    frontend = TraceBuilder(rank=None).steps(3, 1000)
    frontend.write(tmp_path / "nid001234_55555.1733389200123.pt.trace.json.gz")
    analysis = _analyse(tmp_path)
    assert [r.rank for r in analysis.ranks] == [0, 1, 3]
    assert analysis.missing_ranks == [2]
    assert any("rank(s) 2" in n for n in analysis.notes)
    quality = analysis.data_quality["nid001234_55555.1733389200123.pt.trace.json.gz"]
    assert "no distributedInfo rank: not a worker's trace, left out" in quality.notes
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert document["missing_ranks"] == [2]


def test_a_single_trace_without_a_rank_is_rank_0(tmp_path: Path) -> None:
    trace = _gpu_rank(0)
    trace.rank = None
    trace.write(tmp_path / "nid001234_55555.1733389200123.pt.trace.json.gz")
    analysis = _analyse(tmp_path)
    assert [r.rank for r in analysis.ranks] == [0]
    assert analysis.missing_ranks == []
    assert any("numbered 0" in n for n in analysis.notes)


def test_compute_named_broadcast_or_barrier_is_not_unknown_comm(tmp_path: Path) -> None:
    trace = _many_steps()
    trace.kernel("void at::native::elementwise_kernel<128, 4, BroadcastFunctor<float>>", 2600, 5)
    trace.write(tmp_path / "kineto_trace_0.json")
    analysis = _analyse(tmp_path)
    assert analysis.unknown_comm_names == []
    assert analysis.unknown_comm_share == 0


@pytest.mark.parametrize(
    ("name", "comm"),
    [
        ("aten::broadcast_tensors", False),
        ("void at::native::vectorized_elementwise_kernel<4, BroadcastFunctor<float>>", False),
        ("aten::_barrier_like_op", False),
        ("custom_arange_kernel", False),
        ("my_custom_allreduce_kernel", True),
        ("c10d::monitored_barrier_", True),
        ("gloo:broadcast", True),
        ("ncclDevKernel_SomethingNew", True),
        ("_C::shm_broadcast", True),
    ],
)
def test_what_looks_like_communication(name: str, comm: bool) -> None:
    assert looks_like_comm(name) is comm


def test_a_generic_nccl_kernel_takes_its_type_from_collective_name(tmp_path: Path) -> None:
    trace = TraceBuilder(rank=0, world_size=1).steps(3, 1000)
    trace.kernel("ncclDevKernel_Generic_4(ncclDevKernelArgsStorage<4096ul>)", 1100, 50)
    trace.events[-1]["args"]["Collective name"] = "_allgather_base"
    trace.kernel("ncclDevKernel_Generic_4(ncclDevKernelArgsStorage<4096ul>)", 1300, 50)
    trace.write(tmp_path / "kineto_trace_0.json")
    rank = _analyse(tmp_path).ranks[0]
    assert rank.collectives == {"all_gather": 1, "generic": 1}  # the second names no type


def test_only_hpcinfers_own_files_are_passed_over_by_name(tmp_path: Path) -> None:
    for name in ("profile_tp2_rank0.json", "config3.pt.trace.json.gz"):
        _gpu_rank(0 if name.startswith("profile") else 1).write(tmp_path / name)
    for own in ("profile.json", "analysis.json", "analysis_ranks.json", "torch_et_0.json",
                "timing_stats_1.json"):  # fmt: skip
        _gpu_rank(3).write(tmp_path / own)  # even holding traceEvents: ours, not a trace
    analysis = _analyse(tmp_path)
    assert sorted(r.file for r in analysis.ranks) == [
        "config3.pt.trace.json.gz",
        "profile_tp2_rank0.json",
    ]
    assert analysis.notes == []


def test_an_unreadable_file_reports_the_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcinfer.traces import files

    _gpu_rank(0).write(tmp_path / "kineto_trace_0.json")
    locked = _gpu_rank(1).write(tmp_path / "kineto_trace_1.json")
    real = files.open_trace

    def refuse(path: Path) -> object:
        if path == locked:  # root reads a chmod 000 file, so the refusal is made here
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(files, "open_trace", refuse)
    _, notes = files.trace_files(tmp_path)
    assert notes == ["kineto_trace_1.json: cannot be read (Permission denied), not analysed"]
